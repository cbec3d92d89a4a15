"""PRMBench: the reader builds the official toolkit's problems from the real layout, and the metric equals a
transcription of the toolkit's PRMScore (tests/oracles/reference_prmbench.py), both starting from the raw records."""

import json
import random

import pytest

from bis_prm.evaluation.metrics import compute_prmbench
from bis_prm.evaluation.prmbench import load_prmbench
from bis_prm.testing import write_prmbench
from tests.oracles.reference_prmbench import reference_prmbench


def _raw(root):
    """The records as the toolkit reads them: every `.jsonl` file, in our (name) order."""
    return [json.loads(line) for path in sorted(root.glob("*.jsonl")) for line in path.read_text().splitlines()]


def _scores(bench, seed, decimals=1):
    rng = random.Random(seed)
    return {row["id"]: [round(rng.random(), decimals) for _ in row["steps"]] for row in bench.rows}


def _compute(bench, scores, threshold=0.5):
    return compute_prmbench(
        [scores[row["id"]] for row in bench.rows],
        [row["error_steps"] for row in bench.rows],
        [row["classification"] for row in bench.rows],
        threshold,
    )


def assert_equals_toolkit(actual, expected):
    total = expected["total_hallucination_results"]
    for key in ("f1", "negative_f1", "precision", "recall", "negative_precision", "negative_recall"):
        assert actual[key] == pytest.approx(total[key], abs=1e-12), key
    assert actual["prm_score"] == pytest.approx(expected["prm_score"], abs=1e-12)
    assert set(actual["per_category"]) == set(expected["category_prm_score"])
    for category, score in expected["category_prm_score"].items():
        got = actual["per_category"][category]
        assert got["prm_score"] == pytest.approx(score, abs=1e-12), category
        assert got["f1"] == pytest.approx(expected["hallucination_type_results"][category]["f1"], abs=1e-12)
        want = expected["hallucination_type_results"][category]["negative_f1"]
        assert got["negative_f1"] == pytest.approx(want, abs=1e-12)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = write_prmbench(tmp_path_factory.mktemp("prmbench"), rows=12, seed=2)
    return root, load_prmbench(root)


def test_the_reader_builds_the_toolkits_problems(generated):
    root, bench = generated
    meta = reference_prmbench(_raw(root), {row["id"]: [0.5] * len(row["steps"]) for row in bench.rows})["meta_data"]
    # the same problems, ids, categories and error steps, in the same order; steps without their "3. " prefixes
    assert [(row["id"], row["classification"], row["error_steps"]) for row in bench.rows] == [
        (m["idx"], m["classification"], m["error_steps"]) for m in meta
    ]
    assert all(len(row["steps"]) == len(m["steps"]) for row, m in zip(bench.rows, meta, strict=True))
    first = next(m for m in meta if m["classification"] == "circular")
    assert first["steps"][0].startswith("1. ") and not bench.rows[meta.index(first)]["steps"][0].startswith("1.")
    counts = {}
    for row in bench.rows:
        counts[row["classification"]] = counts.get(row["classification"], 0) + 1
    assert counts["correct"] == counts["redundency"] == counts["multi_solutions"] == 12 and len(counts) == 10
    assert any(step > len(row["steps"]) for row in bench.rows for step in row["error_steps"])  # as in the real data
    assert bench.skip_counts() == {} and bench.lines_read == 9 * 12


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.5), (2, 0.3), (3, 0.75)])
def test_prm_score_equals_the_toolkit_on_a_generated_benchmark(generated, seed, threshold):
    root, bench = generated
    scores = _scores(bench, seed)
    assert_equals_toolkit(_compute(bench, scores, threshold), reference_prmbench(_raw(root), scores, threshold))


def test_crafted_predictions_by_hand_and_the_toolkits_sentinels(generated):
    root, bench = generated
    # every step scored exactly 0.5: not above the threshold, so every step is predicted wrong
    flat = {row["id"]: [0.5] * len(row["steps"]) for row in bench.rows}
    results = _compute(bench, flat)
    # no step predicted correct: precision over no step is -1, recall 0, and F1 = 2 * -1 * 0 / -1 = 0
    assert results["precision"] == -1 and results["recall"] == 0 and results["f1"] == 0
    assert results["negative_recall"] == 1.0 and 0 < results["negative_f1"] < 1
    assert results["prm_score"] == pytest.approx(results["negative_f1"] / 2)
    # multi-solution problems have no error step (negative recall over no step: -1, so negative F1 = 0); their
    # PRMScore is their F1, here 0
    assert results["per_category"]["multi_solutions"]["negative_f1"] == 0
    assert results["per_category"]["multi_solutions"]["prm_score"] == 0
    assert_equals_toolkit(results, reference_prmbench(_raw(root), flat))
    # perfect scores: 1.0 on correct steps, 0.0 on error steps
    perfect = {r["id"]: [float(k + 1 not in r["error_steps"]) for k in range(len(r["steps"]))] for r in bench.rows}
    results = _compute(bench, perfect)
    assert results["prm_score"] == 1.0 and set(results["groups"].values()) == {1.0}
    assert_equals_toolkit(results, reference_prmbench(_raw(root), perfect))


def test_hand_computed_example():
    # circular: (0.9 ok, 0.2 wrong*), (0.8 ok, 0.6 wrong*) -> TP 2, FP 1, TN 1, FN 0
    results = compute_prmbench([[0.9, 0.2], [0.8, 0.6]], [[2], [2]], ["circular", "circular"])
    assert results["precision"] == pytest.approx(2 / 3) and results["recall"] == 1.0
    assert results["f1"] == pytest.approx(0.8) and results["negative_f1"] == pytest.approx(2 / 3)
    assert results["prm_score"] == pytest.approx(0.5 * 0.8 + 0.5 * 2 / 3)
    assert results["groups"] == {"simplicity": pytest.approx(results["prm_score"])}
    # the correct solutions count for their own category, not for the totals
    more = compute_prmbench([[0.9, 0.2], [0.8, 0.6], [0.1]], [[2], [2], []], ["circular", "circular", "correct"])
    assert more["prm_score"] == results["prm_score"] and more["per_category"]["correct"]["problems"] == 1
    # a score equal to the threshold is not "correct" (the toolkit's `score > validity_threshold`)
    assert compute_prmbench([[0.5]], [[]], ["circular"])["precision"] == -1


def test_duplicates_and_bad_lines_are_skipped_with_their_file_and_line(tmp_path):
    root = write_prmbench(tmp_path, rows=2, seed=0)
    path = root / "prm800k_test_p1_4o_circular.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    lines += [
        lines[0],  # 3: the same idx again (the toolkit keeps the first)
        "{broken",  # 4
        json.dumps({**record, "idx": "x1", "modified_process": "one string"}),  # 5
        json.dumps({k: v for k, v in record.items() if k != "error_steps"} | {"idx": "x2"}),  # 6
        json.dumps({**record, "idx": "x3", "error_steps": ["3"]}),  # 7
        json.dumps({**record, "idx": "x4", "modified_process": []}),  # 8
        json.dumps({**record, "idx": "x5", "surprise": {"a": 1}}),  # 9: an unknown field is fine
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    bench = load_prmbench(root)
    summary = bench.skipped_summary()
    name = path.name
    assert {reason: list(zip(e["files"], e["lines"], strict=True)) for reason, e in summary.items()} == {
        "broken_json": [(name, 4)],
        "missing_fields": [(name, 6)],
        "wrong_type": [(name, 5), (name, 7)],
        "no_steps": [(name, 8)],
        "duplicate_id": [(name, 3)],
    }
    assert "circular_x5" in {row["id"] for row in bench.rows}
    only = load_prmbench(root, classifications=["correct"])
    assert {row["classification"] for row in only.rows} == {"correct"} and only.excluded["circular"] == 3
    with pytest.raises(ValueError, match=rf"{name}, line 3: id 'circular_prm_test_p1_0' was read before"):
        load_prmbench(root, strict=True)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="Problem 0: error steps must be 1-based integers"):
        compute_prmbench([[0.1]], [["1"]], ["circular"])
    with pytest.raises(ValueError, match="one entry per problem"):
        compute_prmbench([[0.1]], [[1], [1]], ["circular"])
    with pytest.raises(ValueError, match="threshold must be a float"):
        compute_prmbench([[0.1]], [[1]], ["circular"], threshold="auto")
