"""Publishing an annotated corpus on the Hub: the VisualPRM400K-Raw files as they are, with a card recording how
they were made (policy, sampling, K, verifier, estimator, cost)."""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, HfApi

__all__ = ["build_annotation_card", "push_annotations_to_hub"]

_CARD_TEMPLATE = """# {title}

Monte-Carlo step annotations made with `bis_prm annotate`, in the
[VisualPRM400K-v1.1-Raw](https://huggingface.co/datasets/OpenGVLab/VisualPRM400K-v1.1-Raw) layout
(`annotations/<source>.jsonl`; rows `image`, `question`, `question_orig`, `answer`, `response`,
`steps_with_score: [{{step, score, num_mc_correct, num_mc_total}}]`, `num_mc_sequences`, and the provenance
`policy_model`, `rollout_index`, `sample_id`). A step's score is the share of continuations from the prefix ending
with it that reach the gold answer. Select a BIS subset with `bis-prm select --annotations-dir annotations`.

## How it was made

| parameter | value |
|---|---|
| policy | `{policy}` |
| rollouts per question (N) | {num_rollouts} |
| continuations per step (K) | {num_mc} |
| estimator | `{estimator}` |
| sampling | temperature {temperature}, top_p {top_p}, max_new_tokens {max_new_tokens}, seed {seed} |
| steps | split on {separator!r}, merged to at most {max_steps} |
| verifier | `{verifier}` |

## Rows per source

| source | rollouts |
|---|---:|
{source_rows}
| **total** | **{total}** |

Input rows skipped: {skipped}.

## Cost

| | |
|---|---:|
| rollouts sampled | {rollouts:,} |
| continuations | {continuations:,} |
| generated tokens | {generated_tokens:,} |
| prompt tokens | {prompt_tokens:,} |
| of which from the prefix cache | {cached_prompt_tokens:,} |
| wall time (s) | {wall_seconds:.1f} |
"""


def build_annotation_card(report: dict[str, Any], title: str | None = None) -> DatasetCard:
    """
    The dataset card of an annotated corpus, from its `report.json` (see [`~bis_prm.annotation.run_annotation`]).

    Example:

    ```python
    >>> from bis_prm.annotation.config import AnnotateConfig
    >>> settings = AnnotateConfig("q.jsonl", "out", policy="Qwen/Qwen2.5-0.5B-Instruct").output_settings()
    >>> report = {"rows": {"gsm8k": 8}, "skipped": {}, "total_cost": {"continuations": 512}, "settings": settings}
    >>> "| continuations per step (K) | 16 |" in build_annotation_card(report).text
    True

    ```
    """
    settings, cost = report["settings"], report.get("total_cost", {})
    card_data = DatasetCardData(
        pretty_name=title or f"MC annotations by {settings['policy'] or 'a policy'}",
        tags=["bis_prm", "process-reward-model", "monte-carlo-annotation"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "annotations/*.jsonl"}]}],
    )
    skipped = report.get("skipped", {})
    body = _CARD_TEMPLATE.format(
        title=card_data.pretty_name,
        source_rows="\n".join(f"| {source} | {n} |" for source, n in report["rows"].items()),
        total=sum(report["rows"].values()),
        skipped=", ".join(f"{reason}: {entry['count']}" for reason, entry in skipped.items()) or "none",
        **{name: settings[name] for name in ("policy", "num_rollouts", "num_mc", "estimator", "temperature")},
        **{name: settings[name] for name in ("top_p", "max_new_tokens", "seed", "separator", "max_steps", "verifier")},
        **{
            name: cost.get(name, 0)
            for name in (
                "rollouts",
                "continuations",
                "generated_tokens",
                "prompt_tokens",
                "cached_prompt_tokens",
                "wall_seconds",
            )
        },
    )
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def push_annotations_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    report: dict[str, Any],
    private: bool | None = None,
    token: str | None = None,
) -> str:
    """
    Upload `annotations/` and `images/` of an annotated corpus and its card to a dataset repo; returns the URL of
    the commit.

    Example:

    >>> push_annotations_to_hub("corpus", "me/my-mc-corpus", report)  # doctest: +SKIP
    """
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    card = build_annotation_card(report)
    api.upload_file(
        path_or_fileobj=str(card).encode("utf-8"), path_in_repo="README.md", repo_id=repo_id, repo_type="dataset"
    )
    commit = api.upload_folder(
        folder_path=str(output_dir),
        repo_id=repo_id,
        repo_type="dataset",
        allow_patterns=["annotations/*.jsonl", "images/**"],
        commit_message="Upload MC annotations (bis_prm annotate)",
    )
    return str(commit)
