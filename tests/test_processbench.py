"""ProcessBench: the reader on both real layouts and hostile files, and the metric against a transcription of the
official `run_eval_prm_rlhflow.py` (tests/oracles/reference_processbench.py)."""

import json
import math
import random

import pytest

from bis_prm.evaluation.metrics import compute_processbench, processbench_f1_curve, select_processbench_threshold
from bis_prm.evaluation.processbench import load_processbench
from bis_prm.testing import write_processbench
from tests.oracles.reference_processbench import reference_processbench

# (scores, label, split): all-correct problems, errors at the first and the last step, one-step problems, an error
# flagged too early, a false alarm; "math" has only all-correct problems, "omnimath" only problems with an error
CRAFTED = [
    ([0.9, 0.8, 0.7], -1, "gsm8k"),
    ([0.2, 0.9], 0, "gsm8k"),
    ([0.9, 0.9, 0.3], 2, "gsm8k"),
    ([0.6], -1, "gsm8k"),
    ([0.4], 0, "gsm8k"),
    ([0.9, 0.45, 0.1], 2, "gsm8k"),
    ([0.7, 0.3], -1, "gsm8k"),
    ([0.8, 0.6], -1, "math"),
    ([0.35, 0.2], -1, "math"),
    ([0.9, 0.1, 0.9], 1, "omnimath"),
    ([0.3, 0.9], 1, "omnimath"),
]


def _columns(rows):
    return [list(column) for column in zip(*rows, strict=True)]


def assert_equals_official(actual: dict, expected: dict, tol: float = 1e-9):
    """nan in the official numbers (an accuracy over no problem) is None in ours."""
    assert list(actual["per_split"]) == list(expected["per_split"])
    for split, want in expected["per_split"].items():
        got = actual["per_split"][split]
        for key in ("error_acc", "correct_acc", "f1"):
            if math.isnan(want[key]):
                assert got[key] is None, (split, key, got[key])
            else:
                assert got[key] == pytest.approx(want[key], abs=tol), (split, key)
    if expected["average_f1"] is None:
        assert actual["average_f1"] is None
    else:
        assert actual["average_f1"] == pytest.approx(expected["average_f1"], abs=tol)
    assert actual["predicted_errors"] == expected["predictions"]


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.45, 0.0, 0.95, 1.0])
def test_crafted_predictions_equal_the_official_formula(threshold):
    scores, labels, splits = _columns(CRAFTED)
    actual = compute_processbench(scores, labels, splits, threshold)
    assert_equals_official(actual, reference_processbench(scores, labels, splits, threshold))
    assert actual["threshold"] == threshold and actual["threshold_source"] == "fixed"


def test_crafted_predictions_by_hand():
    scores, labels, splits = _columns(CRAFTED)
    results = compute_processbench(scores, labels, splits, 0.5)
    assert results["predicted_errors"] == [-1, 0, 2, -1, 0, 1, 1, -1, 0, 1, 0]
    gsm8k = results["per_split"]["gsm8k"]
    # errors: 3 of 4 found at their step; all-correct: 2 of 3 predicted -1
    assert (gsm8k["error_acc"], gsm8k["correct_acc"]) == (75.0, pytest.approx(200 / 3))
    assert gsm8k["f1"] == pytest.approx(2 * 75 * (200 / 3) / (75 + 200 / 3))
    assert gsm8k["problems"] == 7 and gsm8k["error_problems"] == 4 and gsm8k["correct_problems"] == 3
    # a split without one kind of problem has no F1 (nan in the official script) and stays out of the average
    assert results["per_split"]["math"] == {
        "error_acc": None,
        "correct_acc": 50.0,
        "f1": None,
        "problems": 2,
        "error_problems": 0,
        "correct_problems": 2,
    }
    assert results["per_split"]["omnimath"]["error_acc"] == 50.0 and results["per_split"]["omnimath"]["f1"] is None
    assert results["average_f1"] == gsm8k["f1"]


def test_both_accuracies_zero_is_an_f1_of_zero_where_the_official_script_divides_by_zero():
    scores, labels, splits = [[0.9, 0.9], [0.1]], [0, -1], ["olympiadbench"] * 2
    official = reference_processbench(scores, labels, splits, 0.5)["per_split"]["olympiadbench"]
    assert official["error_acc"] == official["correct_acc"] == 0.0 and math.isnan(official["f1"])
    ours = compute_processbench(scores, labels, splits, 0.5)
    assert ours["per_split"]["olympiadbench"]["f1"] == 0.0 and ours["average_f1"] == 0.0


def test_auto_threshold_is_the_first_best_candidate():
    scores, labels, splits = _columns(CRAFTED)
    auto = compute_processbench(scores, labels, splits, "auto")
    expected = reference_processbench(scores, labels, splits, "auto")
    assert auto["threshold"] == expected["threshold"] and auto["threshold_source"] == "auto (same split)"
    assert_equals_official(auto, expected)
    assert auto["auto_search"]["average_f1"] == auto["average_f1"]
    assert select_processbench_threshold(scores, labels, splits) == auto["threshold"]
    # nothing to tune on: no split has both kinds of problems
    assert compute_processbench([[0.2]], [-1], ["math"], "auto")["threshold"] == 0.5


def test_f1_curve_is_the_metric_at_each_threshold():
    scores, labels, splits = _columns(CRAFTED)
    thresholds = [0.0, 0.25, 0.5, 0.75, 1.0]
    curve = processbench_f1_curve(scores, labels, splits, thresholds)
    for k, t in enumerate(thresholds):
        at = compute_processbench(scores, labels, splits, t)
        assert curve["average_f1"][k] == pytest.approx(at["average_f1"])
        assert curve["per_split"]["gsm8k"][k] == pytest.approx(at["per_split"]["gsm8k"]["f1"])
    assert curve["per_split"]["math"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (([[0.1, 0.2]], [2], ["gsm8k"]), "Problem 0: the label must be -1 or a step index below 2"),
        (([[0.1]], [True], ["gsm8k"]), "Problem 0: the label must be -1"),
        (([[]], [-1], ["gsm8k"]), "Problem 0: no step score"),
        (([[0.1], [float("nan")]], [-1, -1], ["a", "b"]), "Problem 1: a step score is NaN"),
        (([[0.1]], [-1, -1], ["gsm8k"]), "one entry per problem"),
        (([[0.1]], [-1], [""]), "Problem 0: the split must be a non-empty string"),
    ],
)
def test_bad_input_is_a_clear_error(args, message):
    with pytest.raises(ValueError, match=message):
        compute_processbench(*args)


def _random_scores(rows, seed):
    rng = random.Random(seed)
    return [[round(rng.random(), 2) for _ in row["steps"]] for row in rows]


@pytest.mark.parametrize("layout, json_lines", [("official", False), ("official", True), ("trl", False)])
def test_a_generated_benchmark_in_the_real_layout_equals_the_official_formula(tmp_path, layout, json_lines):
    root = write_processbench(tmp_path, rows=40, layout=layout, json_lines=json_lines, seed=3)
    suffix = ".jsonl" if json_lines else ".json"
    written = {}
    for split in ("gsm8k", "math", "olympiadbench", "omnimath"):
        path = root / f"{split}{suffix}"
        text = path.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines()] if json_lines else json.loads(text)
        records[0]["annotator_note"] = {"kept": "out of the rows"}  # an unknown extra field does no harm
        written[split] = records
        if json_lines:
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        else:
            path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    bench = load_processbench(root)
    assert len(bench.rows) == bench.lines_read == 160 and bench.skip_counts() == {}
    assert [row["split"] for row in bench.rows[::40]] == ["gsm8k", "math", "olympiadbench", "omnimath"]
    for row, record in zip(bench.rows, [r for split in written.values() for r in split], strict=True):
        steps = record["steps"] if layout == "official" else record["completions"]
        assert row["steps"] == steps and row["question"] == (record.get("problem") or record["prompt"])
        if layout == "official":
            assert row["label"] == record["label"] and row["id"] == record["id"]
        else:
            assert row["label"] == (record["labels"].index(False) if False in record["labels"] else -1)
    assert any(len(row["steps"]) == 1 for row in bench.rows)  # a one-step problem is among them
    assert {row["label"] == -1 for row in bench.rows} == {True, False}
    scores = _random_scores(bench.rows, seed=1)
    labels, splits = [row["label"] for row in bench.rows], [row["split"] for row in bench.rows]
    for threshold in (0.5, 0.37, "auto"):
        actual = compute_processbench(scores, labels, splits, threshold)
        expected = reference_processbench(scores, labels, splits, threshold)
        assert actual["threshold"] == expected["threshold"]
        assert_equals_official(actual, expected)


def test_json_array_lines_are_where_each_problem_starts(tmp_path):
    root = write_processbench(tmp_path, rows={"gsm8k": 5}, seed=0)
    text = (root / "gsm8k.json").read_text(encoding="utf-8")
    starts = [number for number, line in enumerate(text.splitlines(), start=1) if line == "  {"]
    assert [row["line"] for row in load_processbench(root).rows] == starts


def test_bad_rows_are_skipped_with_their_file_and_line(tmp_path):
    good = {"id": "gsm8k-0", "generator": "g", "problem": "What is 2 + 2?", "steps": ["2 + 2 = 4.", "So 4."]}
    lines = [
        json.dumps({**good, "label": -1}),  # 1
        json.dumps({**good, "id": "gsm8k-1", "label": 5}),  # 2: label out of range
        json.dumps({k: v for k, v in good.items() if k != "steps"} | {"id": "gsm8k-2", "label": 0}),  # 3: no steps
        json.dumps({**good, "id": "gsm8k-3", "label": "1"}),  # 4: wrong type
        json.dumps({**good, "id": "gsm8k-4", "label": True}),  # 5: a bool is no index
        "{broken",  # 6
        "",  # a blank line is no row
        json.dumps({**good, "id": "gsm8k-5", "steps": "one string", "label": 0}),  # 8: wrong type
        json.dumps({**good, "label": 0}),  # 9: duplicate id
        json.dumps({**good, "id": "gsm8k-6", "steps": [], "label": -1}),  # 10: no steps
        json.dumps({**good, "id": "gsm8k-7", "steps": ["a <prm> b"], "label": -1}),  # 11: step token
        json.dumps({**good, "id": "gsm8k-8", "label": 1, "extra": [1, 2]}),  # 12: fine
        json.dumps(["not", "an", "object"]),  # 13
    ]
    # a BOM and CRLF line ends are read as written
    (tmp_path / "gsm8k.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    array = json.dumps([{**good, "id": "math-0", "label": 1}, {**good, "id": "math-1", "label": -1}], indent=1)
    broken = array[: array.rindex("}")] + ', "x": }\n]'
    (tmp_path / "math.json").write_text(broken, encoding="utf-8")
    broken_line = broken.count("\n", 0, broken.index('"x": }')) + 1
    trl = [
        {"prompt": "Q?", "completions": ["a", "b"], "labels": [True, False]},
        {"prompt": "Q?", "completions": ["a"]},
        {"prompt": "Q?", "completions": ["a", "b"], "labels": [True]},
    ]
    (tmp_path / "omnimath.json").write_text(json.dumps(trl), encoding="utf-8")
    (tmp_path / "olympiadbench.json").write_text("[\n]\n", encoding="utf-8")  # an empty split
    (tmp_path / "dataset_infos.json").write_text(json.dumps({"default": {}}), encoding="utf-8")  # not a split
    bench = load_processbench(tmp_path)
    assert [(row["split"], row["line"], row["label"]) for row in bench.rows] == [
        ("gsm8k", 1, -1),
        ("gsm8k", 12, 1),
        ("math", 2, 1),
        ("omnimath", 1, 1),
    ]
    summary = bench.skipped_summary()
    by_reason = {reason: list(zip(entry["files"], entry["lines"], strict=True)) for reason, entry in summary.items()}
    assert by_reason == {
        "broken_json": [("gsm8k.jsonl", 6), ("gsm8k.jsonl", 13), ("math.json", broken_line)],
        "missing_fields": [("gsm8k.jsonl", 3), ("omnimath.json", 1)],
        "wrong_type": [("gsm8k.jsonl", 4), ("gsm8k.jsonl", 5), ("gsm8k.jsonl", 8)],
        "no_steps": [("gsm8k.jsonl", 10)],
        "length_mismatch": [("omnimath.json", 1)],
        "bad_label": [("gsm8k.jsonl", 2)],
        "step_token_in_text": [("gsm8k.jsonl", 11)],
        "duplicate_id": [("gsm8k.jsonl", 9)],
    }
    assert "the rest of the file is not read" in summary["broken_json"]["problems"][2]
    assert bench.lines_read == 12 + 2 + 3
    with pytest.raises(ValueError, match=r"gsm8k.jsonl, line 2: label 5 is neither -1 nor one of the 2 steps"):
        load_processbench(tmp_path, strict=True)
    only = load_processbench(tmp_path, splits=["math"], max_rows=1)
    assert [row["id"] for row in only.rows] == ["math-0"] and only.excluded == {"gsm8k": 1, "omnimath": 1}


def test_a_converted_hub_dataset_in_parquet_is_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    records = [{"id": "math-0", "problem": "Q?", "steps": ["a", "b"], "final_answer_correct": False, "label": 1}]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "data" / "math-00000-of-00001.parquet")
    bench = load_processbench(tmp_path)
    assert [(row["split"], row["id"], row["label"], row["line"]) for row in bench.rows] == [("math", "math-0", 1, 1)]


def test_missing_benchmark_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No .json, .jsonl or .parquet split file"):
        load_processbench(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hub repo id"):
        load_processbench(tmp_path / "absent")
