"""Stepwise corpora beyond VisualPRM400K: TRL's stepwise-supervision format and any Monte-Carlo-annotated dataset.

Any dataset whose rows hold a question, a list of steps and one score per step can be scored and selected with BIS,
text-only or with images. [`stepwise_rollouts`] turns such a `datasets.Dataset` into the rollout columns the
VisualPRM400K reader produces (`source`, `question`, `steps`, `mc_scores`, `image`, `invalid_reason`, ...), so that
scoring, selection, the report, the output formats and training are the same code for every corpus;
[`read_stepwise`] does it for local JSONL / JSON / Parquet files (one source per file, every bad line located and
counted) or a Hub dataset. The column names are given by [`StepwiseColumns`].

TRL's stepwise-supervision format (`prompt`, `completions`: the steps, `labels`: one bool per step, e.g.
`trl-lib/math_shepherd`) is recognised by its columns. Its labels are hard, so a step's score is 1.0 or 0.0: the
reliability `R` of every rollout is then 1 and BIS ranks rollouts by their label mixture `p_pos * (1 - p_pos)` alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from bis_prm.io.jsonl import iter_jsonl

from .visualprm400k import ROLLOUT_SCHEMA

__all__ = [
    "STEPWISE_SUFFIXES",
    "TRL_STEPWISE_COLUMNS",
    "StepwiseColumns",
    "from_trl_stepwise",
    "is_stepwise_corpus",
    "is_trl_stepwise",
    "read_stepwise",
    "stepwise_rollouts",
]

TRL_STEPWISE_COLUMNS = ("prompt", "completions", "labels")
STEPWISE_SUFFIXES = (".jsonl", ".json", ".parquet")
# the rollout columns of an in-memory dataset: those of the VisualPRM400K reader but the file lines
_ROLLOUT_FEATURES = datasets.Features.from_arrow_schema(
    pa.schema([field for field in ROLLOUT_SCHEMA if field.name not in ("line", "file_lines")])
)
# `iter_jsonl` problems under the names of the rollout reasons
_LINE_PROBLEMS = {"undecodable_line": "invalid_utf8", "broken_json": "broken_json"}


@dataclass
class StepwiseColumns:
    """
    Where a stepwise dataset keeps each field of a rollout.

    Parameters:
        question (`str`, *optional*, defaults to `"question"`): the question (a string).
        steps (`str`, *optional*, defaults to `"steps"`): the solution steps (a list of strings).
        scores (`str`, *optional*, defaults to `"mc_scores"`): one score per step in [0, 1] (Monte-Carlo scores, or
            hard 0/1 / bool labels).
        image (`str`, *optional*, defaults to `"image"`): image path(s), used when the column exists.
        source (`str`, *optional*): the column whose values are the sources selected from independently; by default
            each file is one source (a Hub dataset or an in-memory `Dataset`: one source, `"all"`).

    Example:

    ```python
    >>> StepwiseColumns.for_columns(["prompt", "completions", "labels"])
    StepwiseColumns(question='prompt', steps='completions', scores='labels', image='image', source=None)

    ```
    """

    question: str = "question"
    steps: str = "steps"
    scores: str = "mc_scores"
    image: str = "image"
    source: str | None = None

    @classmethod
    def for_columns(cls, column_names: Iterable[str], **given: str | None) -> StepwiseColumns:
        """The columns of a dataset with these `column_names`: TRL's stepwise names when it has them, else the
        defaults; `given` names override either."""
        defaults = cls(*TRL_STEPWISE_COLUMNS) if is_trl_stepwise(column_names) else cls()
        return cls(**{**defaults.__dict__, **{key: value for key, value in given.items() if value is not None}})


def is_trl_stepwise(column_names: Iterable[str]) -> bool:
    """
    Whether a dataset with these columns is in TRL's stepwise-supervision format (and not in the HF PRM format).

    Example:

    ```python
    >>> is_trl_stepwise(["prompt", "completions", "labels"]), is_trl_stepwise(["question", "steps", "labels"])
    (True, False)

    ```
    """
    names = set(column_names)
    return set(TRL_STEPWISE_COLUMNS) <= names and "steps" not in names


def _float_lists(batch: pa.Table) -> pa.Table:
    labels = batch.column("labels").cast(pa.list_(pa.float64()))
    batch = batch.set_column(batch.column_names.index("labels"), "labels", labels)
    return batch.append_column("mc_scores", labels)


def from_trl_stepwise(dataset: datasets.Dataset, **map_kwargs) -> datasets.Dataset:
    """
    A dataset in TRL's stepwise-supervision format in the HF PRM format the trainer reads: `prompt` becomes
    `question`, `completions` becomes `steps`, the bool `labels` become 1.0 / 0.0 (also as `mc_scores`, the targets of
    `label_mode="soft"`). Other columns are kept.

    Example:

    ```python
    >>> ds = datasets.Dataset.from_dict({"prompt": ["1 + 1?"], "completions": [["1 + 1 = 2."]], "labels": [[True]]})
    >>> from_trl_stepwise(ds)[0]
    {'question': '1 + 1?', 'steps': ['1 + 1 = 2.'], 'labels': [1.0], 'mc_scores': [1.0]}

    ```
    """
    dataset = dataset.rename_columns({"prompt": "question", "completions": "steps"})
    if "mc_scores" in dataset.column_names:
        dataset = dataset.remove_columns("mc_scores")
    map_kwargs = {"batched": True, "desc": "Reading TRL stepwise rows", **map_kwargs}
    return dataset.with_format("arrow").map(_float_lists, **map_kwargs).with_format(None)


def _score(value: Any) -> float | None:
    """A step score as a float; `None` when missing; NaN when not a number."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if not isinstance(value, int) or abs(value) < 2**53 else math.inf
    return math.nan


def _rollout(record: Any, columns: StepwiseColumns) -> dict[str, Any]:
    """The rollout columns of one record, with its `invalid_reason` ("" when valid)."""
    out = {"image": [], "image_is_list": True, "question": "", "question_orig": "", "answer": ""}
    out.update({"steps": [], "mc_scores": [], "invalid_reason": ""})
    if not isinstance(record, dict):
        out["invalid_reason"] = "wrong_type"
        return out
    question, steps, scores = (record.get(name) for name in (columns.question, columns.steps, columns.scores))
    image = record.get(columns.image)
    images = [image] if isinstance(image, str) else image if image is not None else []
    wrong_type = (
        not isinstance(question, str)
        or not isinstance(steps, list)
        or not isinstance(scores, list)
        or not isinstance(images, list)
        or not all(isinstance(item, str) for item in (*steps, *images))
    )
    if wrong_type:
        out["invalid_reason"] = "wrong_type"
        return out
    values = [_score(value) for value in scores]
    out.update(image=images, image_is_list=not isinstance(image, str), question=question, steps=steps)
    if not steps:
        out["invalid_reason"] = "no_steps"
    elif any(not step.strip() for step in steps):
        out["invalid_reason"] = "blank_step"
    elif len(values) != len(steps):
        out["invalid_reason"] = "length_mismatch"
    elif any(value is None for value in values):
        out["invalid_reason"] = "missing_score"
    elif any(not 0.0 <= value <= 1.0 for value in values):  # NaN included
        out["invalid_reason"] = "score_out_of_range"
    else:
        out["mc_scores"] = values
    return out


def _table(rollouts: list[dict[str, Any]], source: str, lines: list[int], file_lines: int) -> pa.Table:
    columns = {"source": [source] * len(rollouts), "line": lines, "file_lines": [file_lines] * len(rollouts)}
    for name in ROLLOUT_SCHEMA.names:
        if name not in columns:
            columns[name] = [rollout[name] for rollout in rollouts]
    return pa.table(columns, schema=ROLLOUT_SCHEMA)


def _rollouts_batch(batch: dict[str, list], columns: StepwiseColumns) -> dict[str, list]:
    records = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    rollouts = [_rollout(record, columns) for record in records]
    out = {name: [rollout[name] for rollout in rollouts] for name in _ROLLOUT_FEATURES if name != "source"}
    out["source"] = [str(record[columns.source]) if columns.source else "all" for record in records]
    return out


def stepwise_rollouts(
    dataset: datasets.Dataset, columns: StepwiseColumns | dict[str, str | None] | None = None, **map_kwargs
) -> datasets.Dataset:
    """
    Any stepwise `datasets.Dataset` as rollouts ready for scoring and selection ([`~bis_prm.data.selection`]):
    the columns of the VisualPRM400K reader (`source`, `question`, `steps`, `mc_scores`, `image`, `invalid_reason`,
    ...), every row kept and the unusable ones marked with their reason (`wrong_type`, `no_steps`, `blank_step`,
    `length_mismatch`, `missing_score`, `score_out_of_range`).

    Args:
        dataset (`datasets.Dataset`):
            Rows with a question, a list of steps and one score per step.
        columns ([`StepwiseColumns`] or `dict`, *optional*):
            Where those are; what is not given is TRL's stepwise names when the dataset has them, else `question`,
            `steps`, `mc_scores`.
        **map_kwargs:
            Passed to `datasets.Dataset.map` (`num_proc`, ...).

    Example:

    ```python
    >>> ds = datasets.Dataset.from_dict({"question": ["q"], "steps": [["a", "b"]], "mc_scores": [[0.5, 0.0]]})
    >>> rollouts = stepwise_rollouts(ds)
    >>> rollouts[0]["source"], rollouts[0]["mc_scores"], rollouts[0]["invalid_reason"]
    ('all', [0.5, 0.0], '')

    ```
    """
    columns = _resolve(columns, dataset.column_names)
    _check_columns(columns, dataset.column_names, "The dataset")
    used = [name for name in dict.fromkeys(columns.__dict__.values()) if name]
    present = [name for name in used if name in dataset.column_names]
    map_kwargs = {"desc": "Reading stepwise rows", **map_kwargs}
    return dataset.select_columns(present).map(
        _rollouts_batch,
        batched=True,
        fn_kwargs={"columns": columns},
        remove_columns=present,
        features=_ROLLOUT_FEATURES,
        **map_kwargs,
    )


def _check_columns(columns: StepwiseColumns, column_names: Iterable[str], what: str) -> None:
    names = list(column_names)
    missing = [name for name in (columns.question, columns.steps, columns.scores) if name not in names]
    if missing:
        raise ValueError(
            f"{what} has no column(s) {missing} (it has {sorted(names)}); name the question, steps and scores "
            "columns (StepwiseColumns / --question-column, --steps-column, --scores-column)."
        )


def _jsonl_table(path: Path, columns: StepwiseColumns) -> pa.Table:
    """One JSONL file as rollouts, `source` its stem; each line that is not a usable rollout is kept with its
    reason (`broken_json`, `invalid_utf8`, or those of [`stepwise_rollouts`]) and its line."""
    rollouts, lines = [], []
    with open(path, "rb") as f:
        data = f.read()
    # lines as the VisualPRM400K reader counts them: a final newline opens no extra line
    file_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    for line, record, problem in iter_jsonl(path):
        rollout = _rollout(record, columns) if problem is None else _rollout(None, columns)
        if problem is not None:
            rollout["invalid_reason"] = _LINE_PROBLEMS[problem[0]]
        rollouts.append(rollout)
        lines.append(line - 1)  # 0-based, as the VisualPRM400K reader counts
    return _table(rollouts, path.stem, lines, file_lines)


def _stepwise_files(path: Path) -> list[Path]:
    """The corpus files: `path` itself, or the JSON / JSONL / Parquet files of the directory `path`, by name."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in STEPWISE_SUFFIXES)


def is_stepwise_corpus(path_or_repo: str | os.PathLike) -> bool:
    """
    Whether a local corpus is a stepwise dataset rather than VisualPRM400K-Raw annotations: a JSON / JSONL / Parquet
    file, or a directory of them whose first record has no `steps_with_score` (and no `annotations/` folder).

    Example:

    ```python
    >>> is_stepwise_corpus("data/text-sample/corpus"), is_stepwise_corpus("data/sample/corpus")  # doctest: +SKIP
    (True, False)

    ```
    """
    path = Path(path_or_repo)
    if path.is_file():
        return path.suffix in STEPWISE_SUFFIXES
    if not path.is_dir() or (path / "annotations").is_dir():
        return False
    files = _stepwise_files(path)
    if not files:
        return False
    if files[0].suffix != ".jsonl":
        return True
    first = next((record for _, record, problem in iter_jsonl(files[0], max_lines=100) if problem is None), None)
    return not (isinstance(first, dict) and "steps_with_score" in first)


def read_stepwise(
    path_or_repo: str | os.PathLike | datasets.Dataset,
    columns: StepwiseColumns | dict[str, str | None] | None = None,
    split: str = "train",
    revision: str | None = None,
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, list[str], Path | None]:
    """
    Read a stepwise corpus as rollouts (see [`stepwise_rollouts`]).

    Args:
        path_or_repo (`str`, `os.PathLike` or `datasets.Dataset`):
            A local `.jsonl` / `.json` / `.parquet` file or a directory of them (each file one source, JSONL read line
            by line so that a bad line costs that line only), a Hub dataset repo id (its `split`), or a `Dataset`.
        columns ([`StepwiseColumns`] or `dict`, *optional*):
            The column names; TRL's stepwise names are recognised.
        split (`str`, *optional*, defaults to `"train"`):
            Split of a Hub dataset.
        revision (`str`, *optional*):
            Hub revision.
        num_proc (`int`, *optional*):
            Processes of the `datasets.map` over a Hub dataset or a `Dataset`.

    Returns:
        `tuple`: the rollouts, the sources in order, and the folder image paths are relative to (the files' folder
        for local files, `None` otherwise).

    Example:

    ```python
    >>> rollouts, sources, root = read_stepwise("data/text-sample/corpus")  # doctest: +SKIP
    >>> sources  # doctest: +SKIP
    ['addition', 'chains', 'multiplication', 'word_problems']

    ```
    """
    root = None
    if isinstance(path_or_repo, datasets.Dataset):
        dataset = path_or_repo
    elif Path(path_or_repo).exists():
        path = Path(path_or_repo)
        files = _stepwise_files(path)
        if not files:
            raise FileNotFoundError(f"no {', '.join(STEPWISE_SUFFIXES)} files in {path}")
        root = (path if path.is_dir() else path.parent).resolve()
        if all(file.suffix == ".jsonl" for file in files):
            if _resolve(columns, []).source is not None:
                raise ValueError("JSONL corpora have one source per file; leave the source column unset.")
            tables = []
            for file in files:
                keys = _first_keys(file)
                resolved = _resolve(columns, keys)
                if keys:  # an empty file is a source without rollouts; otherwise its first record names the columns
                    _check_columns(resolved, keys, f"{file} (first record)")
                tables.append(_jsonl_table(file, resolved))
            rollouts = datasets.Dataset(datasets.table.InMemoryTable(pa.concat_tables(tables)))
            return rollouts, [file.stem for file in files], root
        builders = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}
        suffixes = {builders[file.suffix] for file in files}
        if len(suffixes) > 1:
            raise ValueError(f"{path} mixes Parquet and JSON files; keep one kind per corpus.")
        data_files = [str(file) for file in files]
        dataset = datasets.load_dataset(suffixes.pop(), data_files=data_files, split="train")
    else:
        dataset = datasets.load_dataset(str(path_or_repo), split=split, revision=revision)
    rollouts = stepwise_rollouts(dataset, columns, num_proc=num_proc)
    return rollouts, list(dict.fromkeys(rollouts.unique("source"))), root


def _resolve(columns: StepwiseColumns | dict[str, str | None] | None, column_names: Iterable[str]) -> StepwiseColumns:
    if isinstance(columns, StepwiseColumns):
        return columns
    return StepwiseColumns.for_columns(column_names, **(columns or {}))


def _first_keys(path: Path) -> list[str]:
    """The keys of the first record of a JSONL file that parses (to recognise TRL's column names)."""
    first = next((record for _, record, problem in iter_jsonl(path) if problem is None), None)
    return list(first) if isinstance(first, dict) else []
