"""The reference code's InternVL conversation JSONL: writing a subset in it, byte for byte, and reading it back.

One line per rollout, as the paper's `build_bis_subset.py` writes it (here on three):

    {"image": "a.png", "conversations": [
     {"from": "human", "value": "Question: ...\\nProcess: step 1<prm>\\n\\nstep 2<prm>"},
     {"from": "gpt", "value": [1.0, 0.0]}]}

`image` is as in the raw annotation file (a string or a list of strings, relative to the corpus root; `[]` for a
text-only rollout, which InternVL's fine-tuning reads as a pure-text sample), the human value is the PRM prompt of
[`~bis_prm.data.prompt.prompt_column`] and the gpt value holds one target per step: the hard labels (`1.0` when the
step's MC score is > tau) or, with `label_mode="soft"`, the MC scores themselves (the reference's `converted_soft`),
written as `json.dumps` writes floats.

[`read_internvl_jsonl`] turns such a file into the HF PRM format the trainer reads (`image`, `image_root`,
`question`, `steps`, `labels`). No line can stop it: a line that is not a usable rollout is skipped and recorded with
its 1-based line and one of `SKIP_REASONS`:

- `undecodable_line`: bytes that are not UTF-8; `broken_json`: not JSON (both from
  [`~bis_prm.io.jsonl.iter_jsonl`]).
- `wrong_type`: not a JSON object, or `conversations` is not a human turn followed by a gpt turn whose values are a
  string and a list.
- `invalid_text`: a text holds a lone surrogate escape (`\\ud83d`), which no UTF-8 column can store.
- `missing_image`: `image` is missing, null, `""`, or a list with an empty or non-string entry. An empty list `[]` is
  a text-only rollout (what the writer writes for one), as in the VisualPRM400K loader.
- `bad_prompt`: the human value is not `Question: <question>\\nProcess: <steps>`, or text follows the last `<prm>`.
- `no_steps`: the process has no `<prm>`; `blank_step`: a step is empty.
- `bad_label`: a target is not a number in [0, 1] (`true`, `"1"`, `NaN`, `1.5`, ...).
- `length_mismatch`: the number of targets differs from the number of steps.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bis_prm.io.jsonl import UTF8_BOM, SkippedRows, encodes_as_utf8, iter_jsonl

from .arrow_utils import arrow_columns, list_array, list_parts
from .prompt import PROCESS_PREFIX, QUESTION_PREFIX, ExampleError, prompt_column

if TYPE_CHECKING:
    import datasets

__all__ = [
    "LABEL_MODES",
    "SKIP_REASONS",
    "STEP_TOKEN",
    "internvl_lines",
    "is_internvl_jsonl",
    "parse_prompt",
    "read_internvl_jsonl",
    "read_internvl_rows",
    "write_internvl_jsonl",
]

logger = logging.getLogger(__name__)

# the step token of the reference code's files
STEP_TOKEN = "<prm>"
# what the gpt value holds: the hard labels or the MC scores
LABEL_MODES = ("hard", "soft")
SKIP_REASONS = (
    "undecodable_line",
    "broken_json",
    "wrong_type",
    "invalid_text",
    "missing_image",
    "bad_prompt",
    "no_steps",
    "blank_step",
    "bad_label",
    "length_mismatch",
)
# what `json.dumps(..., ensure_ascii=False)` escapes besides the other control characters (as \u00XX)
_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


# ---- writing ----


def _json_string(strings: pa.StringArray) -> pa.Array:
    """`json.dumps(s, ensure_ascii=False)` of every string, vectorised."""
    data = strings.buffers()[2]
    # ASCII bytes stand for themselves in UTF-8, so the bytes present say which characters need escaping at all
    data = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, dtype=np.uint8)
    present = {chr(code) for code in np.unique(data[data < 0x20])}
    present |= {char for char in '"\\' if (data == ord(char)).any()}
    for char, escaped in _JSON_ESCAPES.items():  # backslash first, so inserted backslashes stay single
        if char in present:
            strings = pc.replace_substring(strings, char, escaped)
    for char in sorted(present - _JSON_ESCAPES.keys()):
        strings = pc.replace_substring(strings, char, f"\\u{ord(char):04x}")
    return pc.binary_join_element_wise('"', strings, '"', "")


def _json_floats(values: pa.Array) -> pa.Array:
    """`json.dumps(float(x))` of every value (`1.0`, `0.3333333333333333`, `1e-07`, `-0.0`, `NaN`).

    Arrow's float-to-string cast writes `1`, `1e-7`, `-0`: each distinct value (by its bits, so `-0.0` stays apart
    from `0.0`) is written once by Python instead. MC scores take few distinct values (multiples of 1/16 in
    VisualPRM400K), so this costs a `np.unique` over the flat scores.
    """
    floats = np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    bits, inverse = np.unique(floats.view(np.uint64), return_inverse=True)
    texts = pa.array([json.dumps(value) for value in bits.view(np.float64).tolist()], pa.string())
    return texts.take(pa.array(inverse.reshape(-1)))


def _join_lists(lists: pa.ListArray, values: pa.Array, separator: str) -> pa.Array:
    """Join the strings of each list, after replacing the flat values of `lists` by `values`."""
    lengths, _ = list_parts(lists)
    return pc.binary_join(list_array(lengths, values), separator)


def _check_label_mode(label_mode: str) -> None:
    if label_mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {label_mode!r}; choose one of {', '.join(LABEL_MODES)}")


def internvl_lines(batch: pa.Table, label_mode: str = "hard") -> pa.Array:
    """
    The InternVL conversation record of each scored rollout of `batch` as one JSON line, exactly as the reference
    code writes it: `json.dumps({"image": <as in the raw file>, "conversations": [{"from": "human", "value":
    "Question: <question_orig or question>\\nProcess: <step 1><prm>\\n\\n<step 2><prm>"}, {"from": "gpt",
    "value": [1.0, 0.0]}]}, ensure_ascii=False)`, question and steps stripped like `str.strip`.

    Args:
        batch (`pyarrow.Table`):
            Scored rollouts with the columns `image`, `image_is_list`, `question`, `question_orig`, `steps` and
            `labels` (`label_mode="hard"`) or `mc_scores` (`label_mode="soft"`).
        label_mode (`str`, *optional*, defaults to `"hard"`):
            The gpt value: `"hard"`, the labels (`1.0` / `0.0`); `"soft"`, the MC scores, as `json.dumps` writes them
            (the reference code's `converted_soft`).

    Example:

    >>> batch = pa.table({"image": [["a.png"]], "image_is_list": [False], "question": ["<image>\\nQ"],
    ...                   "question_orig": ["Q "], "steps": [["s1 ", "s2"]], "labels": [[1.0, 0.0]],
    ...                   "mc_scores": [[0.25, 0.0]]})
    >>> json.loads(internvl_lines(batch)[0].as_py())["conversations"][0]["value"]
    'Question: Q\\nProcess: s1<prm>\\n\\ns2<prm>'
    >>> internvl_lines(batch, label_mode="soft")[0].as_py()[-23:]
    '"value": [0.25, 0.0]}]}'
    """
    _check_label_mode(label_mode)
    names = ("image", "image_is_list", "question", "question_orig", "steps")
    images, is_list, question, question_orig, steps = (batch.column(n).combine_chunks() for n in names)
    joined_images = _join_lists(images, _json_string(pc.list_flatten(images)), ", ")
    image = pc.if_else(is_list, pc.binary_join_element_wise("[", joined_images, "]", ""), joined_images)
    human = prompt_column(pc.if_else(pc.equal(question_orig, ""), question, question_orig), steps, STEP_TOKEN)
    if label_mode == "soft":
        targets = batch.column("mc_scores").combine_chunks()
        target_text = _json_floats(pc.list_flatten(targets))
    else:
        targets = batch.column("labels").combine_chunks()
        target_text = pc.if_else(pc.greater(pc.list_flatten(targets), 0.0), "1.0", "0.0")
    parts = ['{"image": ', image, ', "conversations": [{"from": "human", "value": ', _json_string(human)]
    parts += ['}, {"from": "gpt", "value": [', _join_lists(targets, target_text, ", "), "]}]}"]
    return pc.binary_join_element_wise(*parts, "")


def write_internvl_jsonl(
    ds: datasets.Dataset, path: str | os.PathLike, batch_size: int = 10_000, label_mode: str = "hard"
) -> None:
    """Write scored rollouts as InternVL conversation JSONL (see [`internvl_lines`]), hard labels or MC scores."""
    _check_label_mode(label_mode)
    columns = ["image", "image_is_list", "question", "question_orig", "steps"]
    rollouts = arrow_columns(ds, columns + ["mc_scores" if label_mode == "soft" else "labels"])
    with open(path, "wb") as f:
        for start in range(0, len(rollouts), batch_size):
            batch = rollouts.slice(start, batch_size)
            lines = pc.binary_join_element_wise(internvl_lines(batch, label_mode), "\n", "")
            # the UTF-8 bytes of all lines are contiguous in the array's data buffer: write them as they are
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
            f.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])


# ---- reading ----


def parse_prompt(text: str, step_token: str = STEP_TOKEN) -> tuple[str, list[str]]:
    """
    The question and steps of a PRM prompt: the inverse of [`~bis_prm.data.prompt.prompt_column`].

    The question is the text after `Question: ` up to the first `\\nProcess: `; the steps are the pieces between
    step tokens, stripped (which removes the `\\n\\n` separators). `<image>` placeholders stay in the question, as
    the reference files hold them (the collator removes them). A prompt is ambiguous when its question holds
    `\\nProcess: `: the first one is taken to open the process.

    Raises:
        [`~bis_prm.data.prompt.ExampleError`]: `bad_prompt` (not the `Question: ...\\nProcess: ...` structure, or text
        after the last step token), `no_steps` (no step token) or `blank_step` (an empty step).

    Example:

    ```python
    >>> parse_prompt("Question: <image>\\nQ?\\nProcess: It is 2.<prm>\\n\\nSo 2.<prm>")
    ('<image>\\nQ?', ['It is 2.', 'So 2.'])

    ```
    """
    if not text.startswith(QUESTION_PREFIX):
        raise ExampleError("bad_prompt", f"the human value does not start with {QUESTION_PREFIX!r}: {text[:60]!r}")
    question, found, process = text[len(QUESTION_PREFIX) :].partition(PROCESS_PREFIX)
    if not found:
        raise ExampleError("bad_prompt", f"the human value has no {PROCESS_PREFIX!r}: {text[:60]!r}")
    *steps, tail = process.split(step_token)
    if not steps:
        raise ExampleError("no_steps", f"the process has no step token {step_token!r}")
    if tail.strip():
        raise ExampleError("bad_prompt", f"text after the last step token {step_token!r}: {tail[:40]!r}")
    steps = [step.strip() for step in steps]
    if not all(steps):
        raise ExampleError("blank_step", f"step {steps.index('')} is empty")
    return question.strip(), steps


def _target(value: Any) -> float | None:
    """A gpt value item as a float in [0, 1], or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # a 400-digit integer
        return None
    return value if 0.0 <= value <= 1.0 else None  # NaN compares false


def _fields(record: Any) -> tuple[dict | None, tuple[str, str] | None]:
    """The rollout of one parsed line, or the reason and message it cannot be one."""
    if not isinstance(record, dict):
        return None, ("wrong_type", f"the line is a JSON {type(record).__name__}, not an object")
    turns = record.get("conversations")
    if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(turn, dict) for turn in turns)):
        return None, ("wrong_type", "`conversations` must be a list of two turns, human then gpt")
    human, gpt = turns
    if (human.get("from"), gpt.get("from")) != ("human", "gpt"):
        return None, ("wrong_type", f"the turns are from {human.get('from')!r} and {gpt.get('from')!r}")
    prompt, targets = human.get("value"), gpt.get("value")
    if not isinstance(prompt, str) or not isinstance(targets, list):
        return None, ("wrong_type", "the human value must be a string and the gpt value a list of numbers")
    image = record.get("image")
    images = [image] if isinstance(image, str) else image
    if not (isinstance(images, list) and all(isinstance(path, str) and path for path in images)):
        return None, ("missing_image", f"`image` must be a path or a list of paths ([] for none), got {image!r:.80}")
    if not all(encodes_as_utf8(text) for text in (prompt, *images)):
        return None, ("invalid_text", "a text holds a lone surrogate escape")
    try:
        question, steps = parse_prompt(prompt)
    except ExampleError as error:
        return None, (error.reason, error.detail)
    labels = [_target(value) for value in targets]
    if None in labels:
        bad = targets[labels.index(None)]
        return None, ("bad_label", f"targets must be numbers in [0, 1], got {bad!r:.40}")
    if len(labels) != len(steps):
        return None, ("length_mismatch", f"{len(labels)} targets for {len(steps)} steps")
    return {"image": images, "question": question, "steps": steps, "labels": labels}, None


def read_internvl_rows(path: str | os.PathLike) -> tuple[list[dict], SkippedRows]:
    """
    The rollouts of an InternVL conversation JSONL file, each with its 1-based `line`, and the lines skipped.

    Every line is read as written (a UTF-8 BOM and CRLF line ends are fine, blank lines are not rollouts); a line
    that is not a usable rollout is recorded with one of `SKIP_REASONS` (see the module docstring).

    Returns:
        `tuple`: the rollouts (`line`, `image` as a list of paths, `question`, `steps`, `labels`) in file order, and
        the [`~bis_prm.io.jsonl.SkippedRows`].

    Example:

    ```python
    >>> rows, skipped = read_internvl_rows("bis10.jsonl")  # doctest: +SKIP
    >>> rows[0]["steps"][:1], skipped.counts()  # doctest: +SKIP
    (['Step 1: ...'], {'broken_json': 1})

    ```
    """
    rows, skipped = [], SkippedRows()
    for line, record, problem in iter_jsonl(path):
        row = None
        if problem is None:
            row, problem = _fields(record)
        if problem is not None:
            skipped.add(problem[0], line, problem[1])
            continue
        rows.append({"line": line, **row})
    return rows, skipped


def _describe(skipped: SkippedRows, limit: int = 10) -> str:
    parts = []
    for reason, entry in skipped.summary(SKIP_REASONS).items():
        lines = ", ".join(map(str, entry["lines"][:limit])) + (", ..." if entry["count"] > limit else "")
        parts.append(f"{reason}: {entry['count']} (lines {lines}; e.g. {entry['problems'][0]})")
    return "; ".join(parts)


def read_internvl_jsonl(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> datasets.Dataset:
    """
    Read an InternVL conversation JSONL file (the reference code's format, `bis-prm select --format internvl`) as a
    dataset in the HF PRM format the trainer reads.

    Lines that are not usable rollouts are skipped and logged (a warning with their reasons and 1-based lines; see
    [`read_internvl_rows`] to get them).

    Args:
        path (`str` or `os.PathLike`):
            The JSONL file.
        image_root (`str` or `os.PathLike`, *optional*):
            The folder the image paths are relative to (the reference's meta json calls it `root`: the corpus root);
            defaults to the file's folder. Recorded absolute in the `image_root` column.

    Returns:
        `datasets.Dataset` with the columns `image` (list of paths), `image_root`, `question` (with its `<image>`
        placeholders, as in the file), `steps`, `labels` (the gpt values, hard labels or soft MC scores: both train
        as the targets of `label_mode="hard"`) and `line` (1-based, in the file).

    Raises:
        `ValueError`: naming the file when no line is a usable rollout.

    Example:

    ```python
    >>> ds = read_internvl_jsonl("bis10.jsonl", image_root="/data/VisualPRM400K-v1.1-Raw")  # doctest: +SKIP
    >>> ds.column_names  # doctest: +SKIP
    ['image', 'image_root', 'question', 'steps', 'labels', 'line']

    ```
    """
    import datasets

    path = Path(path)
    rows, skipped = read_internvl_rows(path)
    if not rows:
        what = f"all {skipped.total()} lines were skipped: {_describe(skipped)}" if skipped.total() else "it is empty"
        raise ValueError(f"No usable rollout in the InternVL conversation file {path}: {what}.")
    if skipped.total():
        logger.warning(
            "Skipped %d of %d lines of %s: %s", skipped.total(), skipped.total() + len(rows), path, _describe(skipped)
        )
    root = str(Path(image_root if image_root is not None else path.parent).resolve())
    columns = {
        "image": [row["image"] for row in rows],
        "image_root": [root] * len(rows),
        "question": [row["question"] for row in rows],
        "steps": [row["steps"] for row in rows],
        "labels": [row["labels"] for row in rows],
        "line": [row["line"] for row in rows],
    }
    features = datasets.Features(
        {
            "image": datasets.Sequence(datasets.Value("string")),
            "image_root": datasets.Value("string"),
            "question": datasets.Value("string"),
            "steps": datasets.Sequence(datasets.Value("string")),
            "labels": datasets.Sequence(datasets.Value("float64")),
            "line": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)


def is_internvl_jsonl(path: str | os.PathLike, max_lines: int = 100) -> bool:
    """
    Whether a JSONL file holds InternVL conversation records: its first JSON object (within `max_lines` lines) has
    a `conversations` field.

    Example:

    ```python
    >>> is_internvl_jsonl("bis10.jsonl"), is_internvl_jsonl("bis10_hf.jsonl")  # doctest: +SKIP
    (True, False)

    ```
    """
    with open(path, "rb") as f:
        for index, raw in enumerate(f):
            if index >= max_lines:
                break
            raw = raw.removeprefix(UTF8_BOM) if index == 0 else raw
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict):
                return "conversations" in record
    return False
