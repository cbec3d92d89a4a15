"""The main job on the embedded sample: BIS selection → PRM training → VisualProcessBench-style evaluation.

Offline, on a CPU, in minutes. Every stage is the code path a user takes at full scale: [`~sample.make_sample`]
writes the corpus and benchmark, [`~testing.make_tiny_vlm`] the base model, [`~selection.build_subset`] selects
(as `bis-prm select`), [`~training.main`] trains with the tiny recipe (as `recipes/train.py`) and
[`~evaluation.evaluate_prm`] evaluates (as `bis-prm eval`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bis_prm.recipes import recipe_path

# the tiny recipe, shipped in the package (`bis_prm.recipes`, the repository's `recipes/` folder)
TINY_RECIPE = recipe_path("tiny/config_sample.yaml")


@dataclass
class QuickstartConfig:
    """
    Configuration of [`run_quickstart`].

    Parameters:
        output_dir (`str`, *optional*, defaults to `"quickstart_output"`):
            Where the sample, the tiny model, the subset, the trained PRM and the evaluation are written.
        recipe (`str`, *optional*, defaults to the shipped `recipes/tiny/config_sample.yaml`):
            Training recipe; its `selection` block sets the BIS parameters. Its paths are replaced by the
            quickstart's own.
        arch (`str`, *optional*, defaults to `"qwen2_5_vl"`):
            Backbone of the tiny random VLM (see [`~testing.make_tiny_vlm`]).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sample and of the tiny model.
        threshold (`float`, *optional*, defaults to `0.5`):
            Step threshold of the evaluation (fixed, not tuned on the benchmark).
    """

    output_dir: str = field(default="quickstart_output", metadata={"help": "Where everything is written."})
    recipe: str = field(default=str(TINY_RECIPE), metadata={"help": "Training recipe (YAML)."})
    arch: str = field(default="qwen2_5_vl", metadata={"help": "Backbone of the tiny random VLM."})
    seed: int = field(default=0, metadata={"help": "Seed of the sample and the tiny model."})
    threshold: float = field(default=0.5, metadata={"help": "Fixed step threshold of the evaluation."})


def _existing_recipe(recipe: str | Path) -> Path:
    recipe = Path(recipe)
    if not recipe.is_file():
        raise FileNotFoundError(f"Training recipe {recipe} not found.")
    return recipe


def _loss_trend(log_history: list[dict], window: int = 3) -> tuple[float, float]:
    """Mean logged training loss over the first and the last `window` logging steps."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    if not losses:
        return float("nan"), float("nan")
    first, last = losses[:window], losses[-window:]
    return sum(first) / len(first), sum(last) / len(last)


def summary_table(summary: dict) -> str:
    """The short Markdown table printed at the end of [`run_quickstart`]."""
    selection, training, metrics = summary["selection"], summary["training"], summary["metrics"]
    lines = [
        "| stage | result |",
        "| --- | --- |",
        f"| selection ({selection['method']}, ratio {selection['ratio']}, alpha {selection['alpha']}) | "
        f"read {selection['read']}, valid {selection['valid']}, kept {selection['kept']} |",
        f"| training ({training['steps']} steps) | loss {training['loss_first']:.3f} → {training['loss_last']:.3f} "
        f"(mean of the first / last logged steps) |",
    ]
    for source, values in sorted(metrics["per_source"].items()):
        lines.append(f"| macro-F1 {source} ({values['steps']} steps) | {values['macro_f1']:.3f} |")
    lines += [
        f"| **overall macro-F1** (micro over sources, {metrics['total_steps']} steps) | "
        f"**{metrics['micro_over_sources']:.3f}** |",
        f"| threshold | {metrics['threshold']} ({metrics['threshold_source']}) |",
    ]
    return "\n".join(lines)


def train_and_evaluate(
    subset: str | Path,
    base_model: str | Path,
    benchmark: str | Path,
    output_dir: str | Path,
    recipe: str | Path = TINY_RECIPE,
    threshold: float = 0.5,
    overrides: list[str] | None = None,
) -> tuple[dict, dict]:
    """
    Train a PRM on a subset file with a recipe (the `recipes/train.py` code path), then evaluate it on a benchmark.

    Args:
        subset (`str` or `Path`): HF PRM format file (`.parquet`/`.jsonl`) or `save_to_disk` directory.
        base_model (`str` or `Path`): base VLM (or PRM) to start from.
        benchmark (`str` or `Path`): benchmark in the VisualProcessBench layout.
        output_dir (`str` or `Path`): the PRM goes to `output_dir/prm`, the evaluation to `output_dir/eval`.
        recipe (`str` or `Path`, *optional*, defaults to the tiny recipe): training recipe; its data and model paths
            are replaced, its `selection` ignored.
        threshold (`float`, *optional*, defaults to `0.5`): fixed step threshold of the evaluation.
        overrides (`list[str]`, *optional*): more recipe overrides, e.g. `["--seed", "1"]`.

    Returns:
        `tuple[dict, dict]`: the trainer state (`trainer_state.json`) and the evaluation metrics.

    Example:

    >>> state, metrics = train_and_evaluate("bis10.parquet", "tiny", "sample/benchmark", "runs/a")  # doctest: +SKIP
    """
    from trl import ModelConfig, TrlParser

    from bis_prm.evaluation.runner import EvalConfig, evaluate_prm
    from bis_prm.training.model_card import update_model_card
    from bis_prm.training.prm_config import PRMConfig
    from bis_prm.training.script import ScriptArguments
    from bis_prm.training.script import main as train

    recipe = _existing_recipe(recipe)
    output_dir = Path(output_dir)
    parser = TrlParser((ScriptArguments, PRMConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        ["--config", str(recipe), "--dataset_name", str(subset), "--model_name_or_path", str(base_model)]
        + ["--output_dir", str(output_dir / "prm"), *(overrides or [])]
    )
    script_args.selection = None  # the subset is already selected
    train(script_args, training_args, model_args)
    state = json.loads((output_dir / "prm" / "trainer_state.json").read_text(encoding="utf-8"))
    metrics = evaluate_prm(
        EvalConfig(
            model=str(output_dir / "prm"),
            benchmark=str(benchmark),
            output_dir=str(output_dir / "eval"),
            threshold=threshold,
        )
    )
    update_model_card(output_dir / "prm", visualprocessbench=metrics)
    return state, metrics


def recipe_selection(recipe: str | Path = TINY_RECIPE) -> dict:
    """The `selection` block of a recipe (method, ratio, alpha, ...), BIS-10 % with alpha 0.2 when it has none."""
    import yaml

    with open(_existing_recipe(recipe), encoding="utf-8") as handle:
        return dict(yaml.safe_load(handle).get("selection") or {"method": "bis", "ratio": 0.1, "alpha": 0.2})


def run_quickstart(config: QuickstartConfig) -> dict:
    """
    Run selection → training → evaluation on the embedded sample and return (and write) a summary.

    Args:
        config ([`QuickstartConfig`]): where to write and what to run.

    Returns:
        `dict`: `selection` (read/valid/kept and the BIS parameters), `training` (steps, loss trend), `metrics` (the
        VisualProcessBench metrics) and `paths`; also written to `<output_dir>/summary.json`.

    Example:

    >>> summary = run_quickstart(QuickstartConfig(output_dir="quickstart_output"))  # doctest: +SKIP
    >>> summary["metrics"]["micro_over_sources"] > 0.6  # doctest: +SKIP
    True
    """
    from bis_prm.data.formats import write_subset
    from bis_prm.data.sample import make_sample
    from bis_prm.data.selection import build_subset
    from bis_prm.testing import make_tiny_vlm

    out = Path(config.output_dir).resolve()
    paths = {
        "sample": out / "sample",
        "base_model": out / f"tiny-{config.arch}",
        "subset": out / "subset" / "bis_subset.parquet",
        "report": out / "subset" / "bis_subset.selection.json",
        "prm": out / "prm",
        "eval": out / "eval",
    }
    selection = recipe_selection(config.recipe)

    print(f"[1/4] Writing the embedded sample and a tiny random {config.arch} to {out}")
    sample = make_sample(paths["sample"], seed=config.seed)
    make_tiny_vlm(config.arch, paths["base_model"], seed=config.seed)

    print(f"[2/4] Selecting a subset of {sample.corpus_root} with {selection}")
    subset, report = build_subset(sample.corpus_root, **selection)
    write_subset(subset, paths["subset"], report=report)  # the report lands next to it, for the model card

    print(f"[3/4] Training a PRM on {len(subset)} rollouts with {config.recipe}, then [4/4] evaluating it")
    state, metrics = train_and_evaluate(
        paths["subset"], paths["base_model"], sample.benchmark_dir, out, config.recipe, config.threshold
    )
    loss_first, loss_last = _loss_trend(state["log_history"])

    total = report["total"]
    summary = {
        "selection": {**selection, "read": total["read"], "valid": total["valid"], "kept": total["kept"]},
        "training": {"steps": state["global_step"], "loss_first": loss_first, "loss_last": loss_last},
        "metrics": metrics,
        "paths": {name: str(path) for name, path in paths.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("\n" + summary_table(summary))
    print(
        f"\nSelection report: {paths['report']}\nEvaluation: {paths['eval'] / 'metrics.md'}, "
        f"{paths['eval'] / 'plots.png'}, per-step predictions {paths['eval'] / 'predictions.jsonl'}\n"
        f"Summary: {out / 'summary.json'}"
    )
    return summary
