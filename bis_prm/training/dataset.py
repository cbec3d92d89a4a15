"""The training rows of a PRM: a dataset in the HF PRM format checked row by row, its images resolved, its targets set.

One pass (a batched `datasets.map`, `num_proc`-safe) reads every row before the model trains:

- targets: `label_mode="hard"` trains on the `labels` column, the hard labels selection wrote with its `tau` (the one
  source of truth); `"soft"` on the Monte-Carlo scores. Evaluation targets are always the hard labels.
- images: paths are joined to the row's `image_root` (the column [`~bis_prm.data.formats.to_prm_format`] writes) or
  to `PRMConfig.image_root`, must stay inside that root, and are opened from their headers (no decoding); a dataset
  without an image column (a text PRM's) has rollouts without images;
- a row that cannot be trained on is dropped and reported by dataset row and reason; only a dataset that is wholly
  unusable (missing columns, no usable row) raises a [`PRMDatasetError`].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datasets import Sequence as SequenceFeature
from datasets import Value

from bis_prm.data.images import ImageProblem, read_image_size, resolve_image

if TYPE_CHECKING:
    from datasets import Dataset

    from bis_prm.training.prm_config import PRMConfig

__all__ = ["DatasetCheck", "PRMDatasetError", "ROW_PROBLEMS", "check_columns", "prepare_prm_dataset"]

ROW_PROBLEMS = (
    "wrong_type",
    "no_steps",
    "length_mismatch",
    "bad_label",
    "step_token_in_text",
    "missing_image",
    "image_outside_root",
    "image_unreadable",
    "image_too_large",
)


class PRMDatasetError(ValueError):
    """Raised when a dataset cannot be used for PRM training at all (missing columns, no usable row)."""


@dataclass
class DatasetCheck:
    """
    What the preparation pass found in one dataset.

    Parameters:
        name (`str`): `"train"`, `"eval"`, ...
        rows (`int`): rows read.
        dropped (`dict[str, list[tuple[int, str]]]`): reason -> `(dataset row, problem)` of every dropped row.
    """

    name: str
    rows: int = 0
    dropped: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {reason: len(rows) for reason, rows in self.dropped.items()}

    def num_dropped(self) -> int:
        return sum(len(rows) for rows in self.dropped.values())

    def describe(self, limit: int = 20) -> str:
        """A few lines for the log: the counts, then up to `limit` rows with their problems."""
        counts = ", ".join(f"{reason}: {n}" for reason, n in self.counts().items())
        lines = [f"{self.num_dropped()} of {self.rows} rows of the {self.name} dataset dropped ({counts}):"]
        examples = sorted((row, reason, problem) for reason, rows in self.dropped.items() for row, problem in rows)
        lines += [f"  - row {row}: {reason}: {problem}" for row, reason, problem in examples[:limit]]
        if len(examples) > limit:
            lines.append(f"  - ... and {len(examples) - limit} more")
        return "\n".join(lines)


def _holds_paths(feature: Any) -> bool:
    while isinstance(feature, (list, SequenceFeature)):
        feature = feature[0] if isinstance(feature, list) else feature.feature
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _row_problem(steps, question, targets, step_token: str) -> tuple[str, str] | None:
    if not isinstance(question, str) or not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        return "wrong_type", "`question` must be a string and `steps` a list of strings"
    if not steps:
        return "no_steps", "the rollout has no step"
    if targets is None or len(targets) != len(steps):
        return "length_mismatch", f"{len(targets or [])} targets for {len(steps)} steps"
    if any(value is None or isinstance(value, str) or not 0.0 <= float(value) <= 1.0 for value in targets):
        return "bad_label", f"targets must lie in [0, 1], got {list(targets)[:5]}"
    for text in (question, *steps):
        if step_token in text:
            return "step_token_in_text", f"the text already contains the step token {step_token!r}"
    return None


def _prepare_batch(
    batch: dict[str, list],
    indices: list[int],
    target_column: str,
    step_token: str,
    image_root: str | None,
    check_images: bool,
) -> dict[str, list]:
    # Module-level with plain arguments, so that `datasets` can fingerprint it and cache the mapped dataset
    out = {"labels": [], "image": [], "row_index": [], "_problem": [], "_detail": []}
    roots = batch.get("image_root") or [None] * len(indices)
    for position, row in enumerate(indices):
        steps, question = batch["steps"][position], batch["question"][position]
        targets = batch[target_column][position]
        problem = _row_problem(steps, question, targets, step_token)
        images = batch["image"][position] if "image" in batch else []
        if check_images and problem is None:
            root = image_root or roots[position]
            try:
                images = [str(resolve_image(path, root)) for path in _as_list(images)]
                for path in images:
                    read_image_size(path)
            except ImageProblem as error:
                problem = (error.reason, str(error))
        out["labels"].append([] if problem else [float(value) for value in targets])
        out["image"].append(images)
        out["row_index"].append(row)
        out["_problem"].append(problem[0] if problem else "")
        out["_detail"].append(problem[1] if problem else "")
    return out


def check_columns(dataset: Dataset, args: PRMConfig, name: str = "train", hard_labels: bool = False) -> None:
    """
    Raise a [`PRMDatasetError`] naming the missing columns, before anything is loaded. The image column is optional
    (text PRMs).

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from bis_prm import PRMConfig
    >>> check_columns(Dataset.from_dict({"question": ["q"]}), PRMConfig("out"))
    Traceback (most recent call last):
    ...
    bis_prm.training.dataset.PRMDatasetError: The train dataset is missing the required column(s) ...

    ```
    """
    targets = args.dataset_mc_scores_field if args.label_mode == "soft" and not hard_labels else None
    required = [args.dataset_question_field, args.dataset_steps_field]
    required.append(targets or args.dataset_labels_field)
    missing = [column for column in required if column not in dataset.column_names]
    if missing:
        raise PRMDatasetError(
            f"The {name} dataset is missing the required column(s) {missing}; it has {sorted(dataset.column_names)}. "
            "Rename the columns or set the `dataset_*_field` options of `PRMConfig`"
            + (" (hard labels come from the `labels` column selection writes)." if not targets else ".")
        )


def prepare_prm_dataset(
    dataset: Dataset, args: PRMConfig, name: str = "train", hard_labels: bool = False
) -> tuple[Dataset, DatasetCheck]:
    """
    Check every row of a dataset in the HF PRM format and turn the usable ones into training rows.

    The result has the columns the [`~bis_prm.PRMCollator`] reads (`image` resolved, `question`, `steps`, `labels`:
    the targets) plus `row_index`, the row in `dataset`, which collate-time problems are reported with.

    Args:
        dataset (`datasets.Dataset`):
            Rollouts with the columns named by `args.dataset_*_field` (and optionally `image_root`).
        args ([`PRMConfig`]):
            Gives the column names, `label_mode`, `step_token`, `image_root` and `dataset_num_proc`.
        name (`str`, *optional*, defaults to `"train"`):
            Named in the report.
        hard_labels (`bool`, *optional*, defaults to `False`):
            Train on the hard labels whatever `args.label_mode` (evaluation datasets).

    Returns:
        `tuple`: the usable rows, and the [`DatasetCheck`] listing the dropped ones by reason and row.

    Raises:
        [`PRMDatasetError`]: when a required column is missing or no row is usable.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from bis_prm import PRMConfig
    >>> dataset = Dataset.from_dict({"question": ["q", "q"], "steps": [["a"], []], "labels": [[1.0], []]})
    >>> train, check = prepare_prm_dataset(dataset, PRMConfig("out"))
    >>> check.counts()
    {'no_steps': 1}

    ```
    """
    check_columns(dataset, args, name, hard_labels)
    renames = {
        args.dataset_image_field: "image",
        args.dataset_question_field: "question",
        args.dataset_steps_field: "steps",
    }
    renames = {old: new for old, new in renames.items() if old != new and old in dataset.column_names}
    dataset = dataset.rename_columns(renames)
    label_mode = "hard" if hard_labels else args.label_mode
    check_images = "image" in dataset.column_names and _holds_paths(dataset.features["image"])
    # the targets replace any `labels` column: in soft mode they are the MC scores
    prepared = dataset.map(
        _prepare_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={
            "target_column": args.dataset_mc_scores_field if label_mode == "soft" else args.dataset_labels_field,
            "step_token": args.step_token,
            "image_root": args.image_root,
            "check_images": check_images,
        },
        num_proc=args.dataset_num_proc,
        desc=f"Checking the {name} rows",
    )
    check = DatasetCheck(name, rows=len(prepared))
    problems = prepared.select_columns(["row_index", "_problem", "_detail"]).to_dict()
    for row, reason, detail in zip(problems["row_index"], problems["_problem"], problems["_detail"], strict=True):
        if reason:
            check.dropped.setdefault(reason, []).append((row, detail))
    if check.num_dropped() == len(prepared):
        raise PRMDatasetError(f"No row of the {name} dataset can be trained on.\n" + check.describe())
    if check.num_dropped():
        prepared = prepared.select([i for i, reason in enumerate(problems["_problem"]) if not reason])
    prepared = prepared.remove_columns(["_problem", "_detail"])
    return prepared.cast_column("labels", SequenceFeature(Value("float32"))), check
