"""The configuration of `bis-prm annotate`: what is annotated, by which policy, how, and where it goes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .estimators import ESTIMATORS

__all__ = ["DEFAULT_INSTRUCTION", "AnnotateConfig"]

DEFAULT_INSTRUCTION = "Answer step by step, separating the steps with a blank line, and end with 'The answer is X.'"
BACKENDS = ("transformers", "vllm", "vllm-server", "scripted")
# fields that change what is written: a resume with a different value is refused (the others only change speed)
_OUTPUT_FIELDS = (
    "questions",
    "split",
    "policy",
    "instruction",
    "num_rollouts",
    "num_mc",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "separator",
    "max_steps",
    "verifier",
    "estimator",
    "initial_mc",
    "refine_ratio",
    "target_alpha",
    "max_questions",
)


@dataclass
class AnnotateConfig:
    r"""
    Configuration of [`run_annotation`]: Monte-Carlo step annotation as VisualPRM400K was made.

    Parameters that control the input and the output:
        questions (`str`):
            A JSONL / Parquet file, a directory of them (one source per file) or a Hub dataset id. Rows hold
            `question`, `answer`, optionally `image` (a path or a list of paths, relative to `image_root`), `source`
            and a ready `response` or `steps` (then no rollout is generated for the row).
        output_dir (`str`):
            Where the corpus goes: `annotations/<source>.jsonl` (the VisualPRM400K-Raw layout), `manifest.json`,
            `parts/` (the resumable work) and `report.json`.
        split (`str`, *optional*, defaults to `"train"`):
            Split of a Hub dataset.
        image_root (`str`, *optional*):
            The folder image paths are relative to; defaults to the folder of the questions file.
        max_questions (`int`, *optional*):
            Annotate only the first questions (after skipped rows), e.g. for a trial run.

    Parameters that control the policy and its sampling:
        policy (`str`, *optional*, defaults to `""`):
            The policy model (a local path or a Hub id), recorded in every row as `policy_model`.
        backend (`str`, *optional*, defaults to `"transformers"`):
            `"transformers"` (`model.generate`, CPU and small GPUs), `"vllm"` (offline `LLM.generate`: an environment
            with both vLLM and bis_prm), `"vllm-server"` (a running vLLM server at `vllm_url`) or `"scripted"`
            (tests).
        instruction (`str`, *optional*, defaults to `DEFAULT_INSTRUCTION`):
            Appended to each question (on a new line) in the prompt the policy sees.
        num_rollouts (`int`, *optional*, defaults to `4`):
            Responses sampled per question (N).
        temperature (`float`, *optional*, defaults to `0.7`) and top_p (`float`, *optional*, defaults to `1.0`):
            Sampling parameters of the rollouts and of the continuations.
        max_new_tokens (`int`, *optional*, defaults to `1024`):
            Token budget of a whole response: a continuation from a prefix of `p` tokens gets `max_new_tokens - p`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of every draw: each continuation's seed derives from it, the sample id, the step and its index.

    Parameters that control the Monte-Carlo estimation:
        num_mc (`int`, *optional*, defaults to `16`):
            Continuations per step prefix (K); a step's score is `num_mc_correct / num_mc_total`.
        separator (`str`, *optional*, defaults to `"\n\n"`) and max_steps (`int`, *optional*, defaults to `12`):
            How a response is split into steps ([`~bis_prm.data.steps.split_steps`]).
        verifier (`str`, *optional*, defaults to `"auto"`):
            `"auto"`, `"math"` (math-verify), `"choice"` (option letters), `"numeric"` or `"module:function"`.
        estimator (`str`, *optional*, defaults to `"full"`):
            `"full"` (K continuations per step until the first step scoring 0), `"adaptive"` (per rollout) or
            `"budgeted"` (adaptive, then full MC for the likely BIS picks; see `bis_prm.annotation.estimators`).
        initial_mc (`int`, *optional*, defaults to `4`):
            With `estimator="adaptive"` or `"budgeted"`, the continuations drawn first at each step.
        refine_ratio (`float`, *optional*, defaults to `0.2`):
            With `estimator="budgeted"`, the share of each source's rollouts (highest BIS after the first phase)
            annotated with full MC: about twice the ratio you will select.
        target_alpha (`float`, *optional*, defaults to `0.2`):
            With `estimator="budgeted"`, the BIS alpha that ranks the rollouts to refine.

    Parameters that control the execution:
        batch_size (`int`, *optional*, defaults to `8`):
            Questions annotated together; each batch is one resumable part.
        tensor_parallel_size (`int`, *optional*, defaults to `1`) and data_parallel_size (`int`, *optional*,
            defaults to `1`): vLLM's parallelism.
        device (`str`, *optional*): The transformers backend's device (default: CUDA when available).
        vllm_url (`str`, *optional*): The vllm-server backend's server, e.g. `"http://127.0.0.1:8000"`.
        vllm_api_key (`str`, *optional*): Its `--api-key` (never written to the corpus).
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.
    """

    questions: str = field(metadata={"help": "Questions: JSONL / Parquet file, a directory of them, or a Hub id."})
    output_dir: str = field(metadata={"help": "Output corpus directory."})
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})
    image_root: str | None = field(default=None, metadata={"help": "Folder image paths are relative to."})
    max_questions: int | None = field(default=None, metadata={"help": "Annotate only the first questions."})
    policy: str = field(default="", metadata={"help": "Policy model: a local path or a Hub id."})
    backend: str = field(default="transformers", metadata={"help": "transformers, vllm, vllm-server or scripted."})
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "Appended to each question."})
    num_rollouts: int = field(default=4, metadata={"help": "Responses sampled per question (N)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Token budget of a whole response."})
    seed: int = field(default=0, metadata={"help": "Seed every continuation's seed derives from."})
    num_mc: int = field(default=16, metadata={"help": "Continuations per step prefix (K)."})
    separator: str = field(default="\n\n", metadata={"help": "Step separator."})
    max_steps: int = field(default=12, metadata={"help": "Most steps per response (merged beyond)."})
    verifier: str = field(default="auto", metadata={"help": "auto, math, choice, numeric or module:function."})
    estimator: str = field(default="full", metadata={"help": "full or adaptive."})
    initial_mc: int = field(default=4, metadata={"help": "Adaptive estimator: continuations drawn first."})
    refine_ratio: float = field(default=0.2, metadata={"help": "Budgeted: share per source refined with full MC."})
    target_alpha: float = field(default=0.2, metadata={"help": "Budgeted: BIS alpha ranking the rollouts to refine."})
    batch_size: int = field(default=8, metadata={"help": "Questions per resumable part."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallel size."})
    data_parallel_size: int = field(default=1, metadata={"help": "vLLM data parallel size."})
    device: str | None = field(default=None, metadata={"help": "transformers backend device."})
    vllm_url: str | None = field(default=None, metadata={"help": "vllm-server backend: the server's URL."})
    vllm_api_key: str | None = field(default=None, metadata={"help": "vllm-server backend: the server's API key."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}.")
        if self.backend == "vllm-server" and not self.vllm_url:
            raise ValueError("the vllm-server backend needs the server's URL (--vllm-url http://HOST:PORT).")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {self.estimator!r}.")
        for name in ("num_rollouts", "num_mc", "max_new_tokens", "max_steps", "batch_size", "initial_mc"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 < self.refine_ratio <= 1:
            raise ValueError(f"refine_ratio must be in (0, 1], got {self.refine_ratio}.")
        if self.estimator != "full" and self.initial_mc > self.num_mc:
            raise ValueError(f"initial_mc ({self.initial_mc}) must not exceed num_mc ({self.num_mc}).")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (Monte-Carlo estimation samples), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not self.separator:
            raise ValueError("separator must not be empty.")

    def output_settings(self) -> dict[str, Any]:
        """The settings that decide what is written (those a resume must keep)."""
        values = dataclasses.asdict(self)
        return {name: values[name] for name in _OUTPUT_FIELDS}

    def fingerprint(self) -> str:
        """
        A hash of [`output_settings`]: equal for two configurations that write the same corpus.

        Example:

        ```python
        >>> a = AnnotateConfig("q.jsonl", "out", batch_size=2)
        >>> a.fingerprint() == AnnotateConfig("q.jsonl", "elsewhere", batch_size=64).fingerprint()
        True

        ```
        """
        text = json.dumps(self.output_settings(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
