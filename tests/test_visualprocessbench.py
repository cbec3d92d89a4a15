import json

import pytest

from bis_prm.evaluation.visualprocessbench import display_source, load_visualprocessbench
from tests.utils import write_benchmark


def _append(path, *records):
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


def test_reads_rows_faithfully(tmp_path):
    write_benchmark(tmp_path, rows=4)
    bench = load_visualprocessbench(tmp_path)
    assert [row["index"] for row in bench.rows] == [0, 1, 2, 3] and [row["line"] for row in bench.rows] == [1, 2, 3, 4]
    assert bench.rows[1]["image"] == [str(tmp_path / "images/1_0.png"), str(tmp_path / "images/1_1.png")]
    assert bench.rows[1]["image_sizes"] == [(32, 32), (32, 32)]
    assert bench.rows[2]["labels"] == [0, 1, -1, 0] and bench.rows[2]["data_source"] == "MathVerse"
    assert bench.num_steps == 2 + 3 + 4 + 2 and bench.skipped.total() == 0 and bench.lines_read == 4


def test_bad_rows_are_skipped_with_their_line_or_raise(tmp_path):
    write_benchmark(tmp_path, rows=2)
    good = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    mismatch = {**good, "response": {"steps": ["a", "b"], "process_correctness": [1]}}
    missing_image = {**good, "image": ["images/nope.png"]}
    unseen = {**good, "data_source": "ChartQA"}
    _append(
        tmp_path / "test.jsonl", mismatch, "{broken", missing_image, "", unseen, {**good, "image": "images/0_0.png"}
    )
    bench = load_visualprocessbench(tmp_path)
    assert bench.skip_counts() == {"length_mismatch": 1, "broken_json": 1, "missing_image": 1}
    assert [entry["line"] for entry in bench.skipped.rows["missing_image"]] == [5]
    assert bench.skipped.rows["length_mismatch"] == [{"line": 3, "problem": "2 steps but 1 labels"}]
    # every source is kept by default, whatever its name; a blank line is no row
    assert [row["line"] for row in bench.rows] == [1, 2, 7, 8] and bench.lines_read == 7
    assert bench.rows[3]["image"] == [str(tmp_path / "images/0_0.png")]  # a single path string is a one-image list
    filtered = load_visualprocessbench(tmp_path, sources=["MMMU"])
    assert [row["line"] for row in filtered.rows] == [1, 8] and filtered.excluded == {"MathVision": 1, "ChartQA": 1}
    with pytest.raises(ValueError, match=r"test.jsonl, line 3: 2 steps but 1 labels"):
        load_visualprocessbench(tmp_path, strict=True)
    assert len(load_visualprocessbench(tmp_path, max_rows=3).rows) == 2
    summary = bench.skipped_summary()
    assert list(summary) == ["broken_json", "length_mismatch", "missing_image"]  # in the order of SKIP_REASONS
    assert summary["broken_json"]["lines"] == [4] and summary["broken_json"]["count"] == 1


def test_display_names_shorten_known_sources_only():
    assert display_source("MathVerse_MINI_Vision_Only") == "MathVerse"
    assert display_source("MathVision_MINI") == "MathVision" and display_source("DynaMath") == "DynaMath"
    assert display_source("MMMUX") == "MMMUX" and display_source("ChartQA_TEST") == "ChartQA_TEST"


def test_missing_benchmark_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No test.jsonl"):
        load_visualprocessbench(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hub repo id"):
        load_visualprocessbench(tmp_path / "absent")
