"""Publishing a selected subset on the Hugging Face Hub: parquet shards via `Dataset.push_to_hub` plus a generated
dataset card recording how the subset was made."""

from __future__ import annotations

import os
from typing import Any

import datasets
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

_CARD_TEMPLATE = """# {title}

A subset of [{corpus}]({corpus_url}) (revision `{revision}`) selected with `bis_prm` for training multimodal process
reward models, in the HF PRM format (`image`, `image_root`, `question`, `steps`, `labels` = hard step labels
`score > tau`, `mc_scores` = soft labels, `p_pos`, `reliability`, `bis`, `is_mixed`, `source`). Unless the images are
embedded, `image` holds paths relative to the corpus root: train with `image_root` set to your copy of the corpus.

## Selection

| parameter | value |
|---|---|
| method | `{method}` |
| ratio | {ratio} |
| alpha | {alpha} |
| tau | {tau} |
| seed | {seed} |

Balanced-Information Score (https://huggingface.co/papers/2602.04145): `BIS = (p_pos * (1 - p_pos) + alpha) * R`,
with `p_pos` the share of positive steps and `R` the mean MC score of the positive steps (1.0 when none). Each
source keeps its top `max(1, int(m * ratio))` valid rollouts (ties in file order), in original order.

Command:

```bash
{command}
```

## Rollouts per source

| source | read | valid | kept |
|---|---:|---:|---:|
{source_rows}
| **total** | **{total_read}** | **{total_valid}** | **{total_kept}** |

Dropped before ranking: {dropped}.

## Label mixture

| | rollouts | share mixed | mean p_pos | mean R | mean BIS | positive steps | negative steps |
|---|---:|---:|---:|---:|---:|---:|---:|
{stat_rows}
"""


def build_dataset_card(report: dict[str, Any], command: str | None = None) -> DatasetCard:
    """
    Generate the dataset card of a subset from its selection report (see [`~selection.subset_report`]).

    Args:
        report (`dict`):
            The report; `report["params"]` holds `corpus`, `revision`, `method`, `ratio`, `alpha`, `tau`, `seed`.
        command (`str`, *optional*):
            The exact command that produced the subset.

    Returns:
        `huggingface_hub.DatasetCard` with YAML metadata (tags, source dataset, parquet config) and the tables.

    Example:

    >>> from bis_prm.data.selection import run_selection
    >>> rows = {"question": ["q", "q"], "steps": [["a", "b"], ["c"]], "mc_scores": [[1.0, 0.0], [1.0]]}
    >>> report = run_selection(datasets.Dataset.from_dict(rows), method="bis", ratio=0.5).report
    >>> card = build_dataset_card(report, command="bis-prm select --dataset OpenGVLab/VisualPRM400K-v1.1-Raw")
    >>> "| method | `bis` |" in card.text
    True
    """
    params = report["params"]
    corpus = str(params.get("corpus", "unknown"))
    card_data = DatasetCardData(
        pretty_name=f"{corpus.rstrip('/').split('/')[-1]} {params.get('method', 'bis')} subset",
        source_datasets=[corpus],
        tags=["bis_prm", "process-reward-model", "data-selection", "multimodal"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    dropped = {reason: n for reason, n in report["total"]["dropped"].items() if n and reason != "not_selected"}
    stat_rows = "\n".join(
        f"| {name} | {s['rollouts']} | {s['share_mixed']:.4f} | {s['mean_p_pos']:.4f} | {s['mean_reliability']:.4f} "
        f"| {s['mean_bis']:.4f} | {s['positive_steps']} | {s['negative_steps']} |"
        for name, s in (("all valid", report["stats"]["all"]), ("kept", report["stats"]["kept"]))
    )
    body = _CARD_TEMPLATE.format(
        title=card_data.pretty_name,
        corpus=corpus,
        corpus_url=f"https://huggingface.co/datasets/{corpus}",
        revision=params.get("revision") or "main",
        **{key: params.get(key) for key in ("method", "ratio", "alpha", "tau", "seed")},
        command=command or "(not recorded)",
        source_rows="\n".join(
            f"| {source} | {c['read']} | {c['valid']} | {c['kept']} |" for source, c in report["sources"].items()
        ),
        total_read=report["total"]["read"],
        total_valid=report["total"]["valid"],
        total_kept=report["total"]["kept"],
        dropped=", ".join(f"{reason}: {n}" for reason, n in dropped.items()) or "none",
        stat_rows=stat_rows,
    )
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _absolute_images(batch: dict[str, list]) -> dict[str, list]:
    return {
        "image": [
            [os.path.join(root, path) if root else path for path in paths]
            for paths, root in zip(batch["image"], batch["image_root"], strict=True)
        ]
    }


def push_subset_to_hub(
    ds: datasets.Dataset,
    repo_id: str,
    report: dict[str, Any],
    command: str | None = None,
    embed_images: bool = False,
    private: bool | None = None,
    token: str | None = None,
) -> str:
    """
    Push a subset in the HF PRM format as a parquet dataset repo and upload its generated card.

    Args:
        ds (`datasets.Dataset`):
            The subset in the HF PRM format (from [`~formats.to_prm_format`]).
        repo_id (`str`):
            Target dataset repo, e.g. `"me/visualprm400k-bis10"`.
        report (`dict`):
            Selection report, rendered into the card.
        command (`str`, *optional*):
            The command that produced the subset, recorded in the card.
        embed_images (`bool`, *optional*, defaults to `False`):
            Store the image bytes in the parquet shards (`image` cast to a list of `datasets.Image`); otherwise the
            paths are pushed as strings.
        private (`bool`, *optional*):
            Create the repo as private.
        token (`str`, *optional*):
            Hub token; defaults to the logged-in one.

    Returns:
        `str`: the URL of the commit that uploaded the card.

    Example:

    >>> push_subset_to_hub(  # doctest: +SKIP
    ...     prm_subset, "me/visualprm400k-bis10", report, command="bis-prm select ..."
    ... )
    """
    if embed_images:
        # the rows were checked to stay inside their corpus root (`image_outside_root`): only corpus files are read
        ds = ds.map(_absolute_images, batched=True, desc="Resolving images").remove_columns("image_root")
        ds = ds.cast_column("image", datasets.List(datasets.Image()))
    elif "image_root" in ds.column_names:
        # a local folder means nothing on the Hub: the card says to set `image_root` to a copy of the corpus
        ds = ds.map(lambda batch: {"image_root": [None] * len(batch["image_root"])}, batched=True)
    params = report["params"]
    message = f"Upload {params.get('method')} subset (ratio={params.get('ratio')}, alpha={params.get('alpha')})"
    ds.push_to_hub(repo_id, private=private, token=token, commit_message=message, embed_external_files=embed_images)
    card = build_dataset_card(report, command=command)
    commit = HfApi(token=token).upload_file(
        path_or_fileobj=str(card).encode("utf-8"),
        path_in_repo="README.md",
        repo_id=repo_id,
        repo_type="dataset",
        commit_message="Add bis_prm dataset card",
    )
    return str(commit)
