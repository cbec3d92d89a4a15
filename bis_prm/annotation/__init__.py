"""Monte-Carlo step annotation (`bis-prm annotate`): questions in, a VisualPRM400K-Raw corpus out.

The first room of the house: annotate -> data (selection) -> training -> evaluation. `config` (what and how),
`questions` (reading the input), `backend` (the engine interface; `transformers_backend`, `vllm_backend`), `verify`
(answer checking), `estimators` (how many continuations each step gets), `pipeline` (the MC procedure), `store`
(resumable parts, manifest, assembly), `cost` (dry-run estimate and counters), `run` (`run_annotation`) and `card`
(the dataset card of `--push-to-hub`).
"""

from .backend import Generation, GenerationBackend, GenerationRequest, ScriptedBackend
from .config import AnnotateConfig
from .run import AnnotationResult, run_annotation

__all__ = [
    "AnnotateConfig",
    "AnnotationResult",
    "Generation",
    "GenerationBackend",
    "GenerationRequest",
    "ScriptedBackend",
    "run_annotation",
]
