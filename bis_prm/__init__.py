"""bis_prm: Balanced-Information Score data selection and training for process reward models.

`import bis_prm` registers the PRM classes of the vision-language backbones with `AutoModelForTokenClassification`
(importing `bis_prm.model.modeling_prm`, which calls transformers' `register`), so that
`AutoModelForTokenClassification.from_pretrained(path)` loads a saved PRM, and makes sure the `visualprocessbench`,
`processbench` and `prmbench` metrics resolve by their bare names offline (see `bis_prm.evaluation.metrics.install`;
`BIS_PRM_NO_METRIC_INSTALL=1` skips that). The other public names are imported on first use.
"""

import importlib
import os
import sys
import warnings
from pathlib import Path

__version__ = "0.3.0.dev0"

# public name -> module defining it
_EXPORTS = {
    # annotation: questions -> Monte-Carlo step scores (VisualPRM400K-Raw)
    "AnnotateConfig": "bis_prm.annotation.config",
    "run_annotation": "bis_prm.annotation.run",
    # data: VisualPRM400K-Raw -> scored rollouts -> BIS subset -> Hub
    "load_visualprm400k": "bis_prm.data.visualprm400k",
    "score_rollouts": "bis_prm.data.scoring",
    "select_subset": "bis_prm.data.selection",
    "select_bis": "bis_prm.data.selection",
    "build_subset": "bis_prm.data.selection",
    "subset_report": "bis_prm.data.selection",
    "stream_selection": "bis_prm.data.streaming",
    "run_selection": "bis_prm.data.selection",
    "StepwiseColumns": "bis_prm.data.stepwise",
    "from_trl_stepwise": "bis_prm.data.stepwise",
    "read_stepwise": "bis_prm.data.stepwise",
    "make_text_sample": "bis_prm.data.sample",
    "PackedBatchRebalanceSampler": "bis_prm.training.sampling",
    "to_prm_format": "bis_prm.data.formats",
    "write_subset": "bis_prm.data.formats",
    "build_dataset_card": "bis_prm.data.dataset_card",
    "push_subset_to_hub": "bis_prm.data.dataset_card",
    # model: VLM -> step-level PRM
    "Qwen2_5_VLForTokenClassification": "bis_prm.model.modeling_prm",
    "Qwen2VLForTokenClassification": "bis_prm.model.modeling_prm",
    "InternVLForTokenClassification": "bis_prm.model.modeling_prm",
    "LlavaForTokenClassification": "bis_prm.model.modeling_prm",
    "add_step_token": "bis_prm.model.modeling_prm",
    "load_prm": "bis_prm.model.modeling_prm",
    "convert_internvl": "bis_prm.model.convert_internvl",
    "prm_lora_config": "bis_prm.model.modeling_prm",
    "prm_loss": "bis_prm.model.modeling_prm",
    "PRMCollator": "bis_prm.model.processing_prm",
    "render_prompt": "bis_prm.data.prompt",
    "tile_images": "bis_prm.model.processing_prm",
    "aggregate_many": "bis_prm.model.inference",
    "aggregate_scores": "bis_prm.model.inference",
    "score_steps": "bis_prm.model.inference",
    "StepScorer": "bis_prm.model.inference",
    "StepScorerBase": "bis_prm.model.inference",
    "load_scorer": "bis_prm.model.scorers",
    "TokenClassificationScorer": "bis_prm.model.scorers",
    "QwenPRMScorer": "bis_prm.model.scorers",
    "StepTagScorer": "bis_prm.model.scorers",
    "ConversationScorer": "bis_prm.model.scorers",
    "RLHFlowScorer": "bis_prm.model.scorers",
    "VisualPRMScorer": "bis_prm.model.scorers",
    # training: PRMTrainer on TRL
    "PRMConfig": "bis_prm.training.prm_config",
    "PRMTrainer": "bis_prm.training.prm_trainer",
    "PRMDatasetError": "bis_prm.training.prm_trainer",
    "ScriptArguments": "bis_prm.training.script",
    # the embedded sample and the main job on it
    "SampleConfig": "bis_prm.data.sample",
    "SamplePaths": "bis_prm.data.sample",
    "make_sample": "bis_prm.data.sample",
    "QuickstartConfig": "bis_prm.quickstart",
    "run_quickstart": "bis_prm.quickstart",
    # evaluation: VisualProcessBench metric, runner, Best-of-N
    "VISUALPROCESSBENCH": "bis_prm.evaluation.metrics",
    "compute_visualprocessbench": "bis_prm.evaluation.metrics",
    "load_visualprocessbench": "bis_prm.evaluation.visualprocessbench",
    "PROCESSBENCH": "bis_prm.evaluation.metrics",
    "PRMBENCH": "bis_prm.evaluation.metrics",
    "compute_processbench": "bis_prm.evaluation.metrics",
    "compute_prmbench": "bis_prm.evaluation.metrics",
    "load_processbench": "bis_prm.evaluation.processbench",
    "load_prmbench": "bis_prm.evaluation.prmbench",
    "EvalConfig": "bis_prm.evaluation.runner",
    "evaluate_prm": "bis_prm.evaluation.runner",
    "best_of_n": "bis_prm.evaluation.best_of_n",
    # rewards: a PRM as the reward of TRL's GRPOTrainer / RLOOTrainer
    "PRMReward": "bis_prm.rewards.prm_reward",
    # serving: bis-prm serve and its client
    "RemoteScorer": "bis_prm.serving.client",
    "BatchingEngine": "bis_prm.serving.engine",
    # serving: vLLM serves PRMs with STEP pooling
    "VLLMScorer": "bis_prm.serving.vllm",
    "vllm_serve_command": "bis_prm.serving.vllm",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _started_as_the_command_line() -> bool:
    # `bis-prm ...` and `python -m bis_prm ...` import what each sub-command needs: `eval`, `train`, ... load the
    # model code themselves, and `select` never pays the seconds torch and the backbones take to import
    argv = getattr(sys, "orig_argv", sys.argv)
    as_module = "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == "bis_prm"
    return as_module or Path(sys.argv[0]).name in ("bis-prm", "bis-prm.exe")


if not _started_as_the_command_line():
    importlib.import_module("bis_prm.model.modeling_prm")

if not os.environ.get("BIS_PRM_NO_METRIC_INSTALL"):
    from bis_prm.evaluation.metrics import install_metrics

    try:
        install_metrics()
    except OSError as err:  # a read-only cache only loses the bare names; loading a script by its path still works
        warnings.warn(f"Could not install the bis_prm metrics into evaluate's modules cache: {err}", stacklevel=2)
