"""`bis-prm eval` on ProcessBench and PRMBench layouts with a tiny text PRM: the same runner as VisualProcessBench,
every usable row scored, the numbers equal to the official formulas on the written predictions, bad rows listed."""

import json

import pytest

from bis_prm.cli import main
from bis_prm.evaluation.adapters import detect_benchmark_type
from bis_prm.model.inference import score_steps
from bis_prm.model.modeling_prm import load_prm
from bis_prm.testing import write_prmbench, write_processbench, write_visualprocessbench
from tests.oracles.reference_prmbench import reference_prmbench
from tests.oracles.reference_processbench import reference_processbench, single_process
from tests.utils import tiny_base

BAD_ROWS = {  # reason -> the row appended to gsm8k.jsonl
    "missing_fields": {"id": "gsm8k-bad-1", "problem": "What is 1 + 1?", "label": -1},
    "bad_label": {"id": "gsm8k-bad-2", "problem": "What is 1 + 1?", "steps": ["1 + 1 = 2."], "label": 3},
    "wrong_type": {"id": "gsm8k-bad-3", "problem": "What is 1 + 1?", "steps": ["1 + 1 = 2."], "label": "0"},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_eval")
    model, tokenizer = load_prm(tiny_base("qwen2", tmp_path_factory), head="linear")
    model.save_pretrained(root / "prm")
    tokenizer.save_pretrained(root / "prm")
    bench = write_processbench(root / "processbench", rows={"gsm8k": 6, "math": 6, "olympiadbench": 5, "omnimath": 5})
    # gsm8k as JSON lines, with a bad row of each kind after its 6 good ones (lines 7, 8, 9)
    records = json.loads((bench / "gsm8k.json").read_text())
    (bench / "gsm8k.json").unlink()
    lines = [json.dumps(record) for record in records] + [json.dumps(row) for row in BAD_ROWS.values()]
    (bench / "gsm8k.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_prmbench(root / "prmbench", rows=2, steps=(2, 5))
    return root


def _eval(workspace, bench, out, *extra) -> int:
    args = ["eval", "--model", str(workspace / "prm"), "--benchmark", str(bench), "--output-dir", str(out)]
    return main([*args, "--num-workers", "0", "--batch-size", "4", *extra])


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def processbench_run(workspace):
    out = workspace / "pb_out"
    assert _eval(workspace, workspace / "processbench", out) == 0
    return out


def test_processbench_every_row_scored_and_the_official_numbers(workspace, processbench_run):
    out = processbench_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark_type"] == "processbench"
    assert metrics["rows"] == 22 and metrics["rows_read"] == 25
    rows = _rows(out)
    assert [row["split"] for row in rows] == ["gsm8k"] * 6 + ["math"] * 6 + ["olympiadbench"] * 5 + ["omnimath"] * 5
    assert {row["id"] for row in rows} == {f"{s}-{i}" for s, n in [("gsm8k", 6), ("math", 6)] for i in range(n)} | {
        f"{s}-{i}" for s in ("olympiadbench", "omnimath") for i in range(5)
    }
    scores, labels, splits = ([row[k] for row in rows] for k in ("scores", "label", "split"))
    expected = reference_processbench(scores, labels, splits, 0.5)
    assert [row["prediction"] for row in rows] == [single_process(s, 0.5) for s in scores]
    for split, want in expected["per_split"].items():
        got = metrics["per_split"][split]
        for key in ("error_acc", "correct_acc", "f1"):
            if want[key] == want[key]:
                assert got[key] == pytest.approx(want[key], abs=1e-9)
            elif key == "f1" and want["error_acc"] == want["correct_acc"] == 0:
                assert got[key] == 0.0  # the official script's 0 / 0 (nan) is an F1 of 0 here
            else:
                assert got[key] is None  # a split without one kind of problem
    assert metrics["average_f1"] == pytest.approx(expected["average_f1"], abs=1e-9)
    table = (out / "metrics.md").read_text()
    assert "| split | problems | with an error | all correct | error acc | correct acc | F1 |" in table
    for split in ("gsm8k", "math", "olympiadbench", "omnimath"):
        assert f"| {split} | " in table
    assert f"**{metrics['average_f1']:.2f}**" in table
    assert (out / "plots.png").stat().st_size > 0


def test_processbench_bad_rows_are_listed_by_file_and_line(processbench_run, capsys):
    metrics = json.loads((processbench_run / "metrics.json").read_text())
    for line, reason in enumerate(BAD_ROWS, start=7):
        assert metrics["skipped"][reason] == {
            "count": 1,
            "lines": [line],
            "problems": metrics["skipped"][reason]["problems"],
            "files": ["gsm8k.jsonl"],
        }
        assert f"- {reason}: 1 (lines gsm8k.jsonl:{line})" in (processbench_run / "metrics.md").read_text()


def test_processbench_scores_are_those_of_each_row_alone(workspace, processbench_run):
    model, tokenizer = load_prm(workspace / "prm")
    rows = _rows(processbench_run)
    records = {
        r["id"]: r
        for s in ("math", "omnimath")
        for r in json.loads((workspace / "processbench" / f"{s}.json").read_text())
    }
    for row in [row for row in rows if row["id"] in records][:4]:
        record = records[row["id"]]
        [alone] = score_steps(
            model, tokenizer, [{"question": record["problem"], "steps": record["steps"]}], batch_size=1
        )
        assert row["scores"] == pytest.approx(alone, abs=1e-5) and row["label"] == record["label"]


def test_processbench_threshold_auto_and_from_another_split(workspace, processbench_run, tmp_path):
    auto = tmp_path / "auto"
    assert _eval(workspace, workspace / "processbench", auto, "--threshold", "auto") == 0
    metrics = json.loads((auto / "metrics.json").read_text())
    rows = _rows(auto)
    expected = reference_processbench(*([row[k] for row in rows] for k in ("scores", "label", "split")), "auto")
    assert metrics["threshold"] == expected["threshold"] and metrics["threshold_source"] == "auto (same split)"
    honest = tmp_path / "honest"
    args = [
        "--threshold-from",
        str(auto / "predictions.jsonl"),
        "--sources",
        "math",
        "--benchmark-type",
        "processbench",
    ]
    assert _eval(workspace, workspace / "processbench", honest, *args) == 0
    metrics = json.loads((honest / "metrics.json").read_text())
    assert metrics["threshold"] == expected["threshold"] and list(metrics["per_split"]) == ["math"]
    assert metrics["threshold_source"].startswith("auto (separate split:")
    assert metrics["excluded_by_sources"] == {"gsm8k": 6, "olympiadbench": 5, "omnimath": 5}
    assert "left out by the `splits` filter" in (honest / "metrics.md").read_text()


def test_prmbench_prm_score_equals_the_toolkit(workspace, tmp_path):
    out = tmp_path / "prmbench"
    assert _eval(workspace, workspace / "prmbench", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = _rows(out)
    assert metrics["benchmark_type"] == "prmbench" and metrics["rows"] == len(rows) == 9 * 2 + 2
    raw = [json.loads(line) for p in sorted((workspace / "prmbench").glob("*.jsonl")) for line in p.open()]
    expected = reference_prmbench(raw, {row["id"]: row["scores"] for row in rows})
    assert metrics["prm_score"] == pytest.approx(expected["prm_score"], abs=1e-12)
    for category, score in expected["category_prm_score"].items():
        assert metrics["per_category"][category]["prm_score"] == pytest.approx(score, abs=1e-12)
    table = (out / "metrics.md").read_text()
    assert f"**{100 * metrics['prm_score']:.2f}**" in table and "| simplicity | circular |" in table


def test_prmbench_takes_a_fixed_threshold(workspace, tmp_path, capsys):
    assert _eval(workspace, workspace / "prmbench", tmp_path / "out", "--threshold", "auto") == 2
    assert "prmbench takes a fixed --threshold" in capsys.readouterr().err


def test_the_benchmark_type_is_detected(workspace, tmp_path):
    write_visualprocessbench(tmp_path / "vpb", rows=2, image_side=(28, 32))
    assert detect_benchmark_type(tmp_path / "vpb") == "visualprocessbench"
    assert detect_benchmark_type(workspace / "processbench") == "processbench"
    assert detect_benchmark_type(workspace / "processbench" / "math.json") == "processbench"
    assert detect_benchmark_type(workspace / "prmbench") == "prmbench"
    assert detect_benchmark_type(next((workspace / "prmbench").glob("*.jsonl"))) == "prmbench"
    assert detect_benchmark_type("OpenGVLab/VisualProcessBench") == "visualprocessbench"
    assert detect_benchmark_type("Qwen/ProcessBench") == "processbench"
    assert detect_benchmark_type("hitsmy/PRMBench_Preview") == "prmbench"
    assert detect_benchmark_type("someone/my-prm-bench") == "prmbench"


def test_the_how_to_add_a_benchmark_example_of_the_docs_runs(workspace, tmp_path):
    from bis_prm.evaluation.adapters import ADAPTERS
    from tests.utils import REPO_ROOT

    doc = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
    code = doc.split("scored by step accuracy:")[1].split("```python")[1].split("```")[0]
    rows = [
        {"question": "What is 2 + 2?", "steps": ["2 + 2 = 4.", "So 4."], "labels": [1, 1]},
        {"question": "What is 3 + 3?", "steps": ["3 + 3 = 7."], "labels": [0]},
    ]
    bench = tmp_path / "stepbench.jsonl"
    bench.write_text("\n".join([*map(json.dumps, rows), "{broken"]) + "\n")
    code = code.replace('"my-prm"', repr(str(workspace / "prm"))).replace('"stepbench.jsonl"', repr(str(bench)))
    code = code.replace('output_dir="out"', f"output_dir={str(tmp_path / 'out')!r}, num_workers=0")
    try:
        namespace = {}
        exec(code, namespace)
        predictions = _rows(tmp_path / "out")
        pairs = [(s >= 0.5, y == 1) for row in predictions for s, y in zip(row["scores"], row["targets"], strict=True)]
        assert namespace["metrics"]["accuracy"] == sum(p == y for p, y in pairs) / 3
        assert namespace["metrics"]["skipped"]["broken_json"]["lines"] == [3]
        assert "Step accuracy:" in (tmp_path / "out" / "metrics.md").read_text()
    finally:
        ADAPTERS.pop("stepbench", None)


@pytest.mark.slow
def test_processbench_on_two_processes_gives_the_scores_of_one(workspace, processbench_run, tmp_path):
    """`accelerate launch --num_processes 2` on ProcessBench: the shared runner deals whole batches."""
    import os
    import subprocess
    import sys

    from tests.utils import REPO_ROOT

    out = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines"]
    launch += ["1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bis_prm", "eval", "--num-workers", "0"]
    launch += ["--model", str(workspace / "prm"), "--benchmark", str(workspace / "processbench")]
    launch += ["--output-dir", str(out), "--batch-size", "4"]
    run = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((processbench_run / "metrics.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == one
    assert _rows(out) == _rows(processbench_run)


def test_a_hub_benchmark_that_cannot_be_downloaded_is_a_one_line_error(workspace, tmp_path, monkeypatch, capsys):
    import bis_prm.evaluation.runner

    monkeypatch.setattr(bis_prm.evaluation.runner, "_load_model", lambda *a: pytest.fail("the model was loaded"))
    assert _eval(workspace, "someone/absent-processbench", tmp_path / "out") == 2  # the tests are offline
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "bis-prm eval: error: Could not download the Hub dataset 'someone/absent-processbench': "
    )
