import json

import pytest

from bis_prm.evaluation.visualprocessbench import load_visualprocessbench
from tests._metric_utils import write_benchmark


def _append(path, *records):
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


def test_reads_rows_faithfully(tmp_path):
    write_benchmark(tmp_path, rows=4)
    bench = load_visualprocessbench(tmp_path)
    assert [row["index"] for row in bench.rows] == [0, 1, 2, 3]
    assert bench.rows[1]["image"] == [str(tmp_path / "images/1_0.png"), str(tmp_path / "images/1_1.png")]
    assert bench.rows[2]["labels"] == [0, 1, -1, 0] and bench.rows[2]["data_source"] == "MathVerse"
    assert bench.num_steps == 2 + 3 + 4 + 2 and bench.skipped == {}


def test_bad_rows_are_skipped_and_counted_or_raise(tmp_path):
    write_benchmark(tmp_path, rows=2)
    good = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    mismatch = {**good, "response": {"steps": ["a", "b"], "process_correctness": [1]}}
    missing_image = {**good, "image": ["images/nope.png"]}
    unknown = {**good, "data_source": "ChartQA"}
    _append(tmp_path / "test.jsonl", mismatch, "{broken", missing_image, unknown, {**good, "image": "images/0_0.png"})
    bench = load_visualprocessbench(tmp_path)
    assert bench.skipped == {"length_mismatch": [2], "broken_json": [3], "missing_image": [4], "unknown_source": [5]}
    assert [row["index"] for row in bench.rows] == [0, 1, 6]
    assert bench.rows[2]["image"] == [str(tmp_path / "images/0_0.png")]  # a single path string is a one-image list
    assert [row["index"] for row in load_visualprocessbench(tmp_path, sources=None).rows] == [0, 1, 5, 6]
    with pytest.raises(ValueError, match=r"test.jsonl, line 3: 2 steps but 1 labels"):
        load_visualprocessbench(tmp_path, strict=True)
    assert len(load_visualprocessbench(tmp_path, max_rows=3).rows) == 2


def test_missing_benchmark_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No test.jsonl"):
        load_visualprocessbench(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hub repo id"):
        load_visualprocessbench(tmp_path / "absent")
