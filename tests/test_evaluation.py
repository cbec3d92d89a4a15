import json
import os
import subprocess
import sys

import pytest

from bis_prm.cli import main
from bis_prm.evaluation.runner import EvalConfig, evaluate_prm, read_predictions
from tests._metric_utils import REPO_ROOT, load_reference, write_benchmark


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny saved PRM and a 7-row benchmark in the VisualProcessBench layout, one row of it unusable."""
    from bis_prm.model.modeling_prm import load_prm
    from bis_prm.testing import make_tiny_vlm

    root = tmp_path_factory.mktemp("eval")
    model, processor = load_prm(make_tiny_vlm("qwen2_5_vl", root / "base"))
    model.save_pretrained(root / "prm")
    processor.save_pretrained(root / "prm")
    bench = write_benchmark(root / "bench", rows=6)
    bad = json.loads((bench / "test.jsonl").read_text().splitlines()[0])
    bad["response"]["process_correctness"] = [1]
    with open(bench / "test.jsonl", "a") as f:
        f.write(json.dumps(bad) + "\n")
    return root


def test_eval_end_to_end_single_process(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = workspace / "out"
    config = EvalConfig(model=str(workspace / "prm"), benchmark=str(workspace / "bench"), output_dir=str(out))
    config.threshold, config.batch_size = "auto", 4
    metrics = evaluate_prm(config)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "plots.png", "predictions.jsonl"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["skipped"] == {"length_mismatch": {"count": 1, "rows": [6]}} and metrics["rows"] == 6
    predictions, references, sources = read_predictions(out / "predictions.jsonl")
    assert [len(p) for p in predictions] == [2, 3, 4, 2, 3, 4]
    assert all(0.0 <= s <= 1.0 for row in predictions for s in row)
    # counted steps of the six usable rows (labels cycle 1, -1, 0)
    assert metrics["total_steps"] == sum(1 for row in references for y in row if y != 0) == 12
    expected = load_reference()(predictions, references, sources, "auto")
    for key in ("micro_over_sources", "macro_f1_pooled", "threshold", "total_steps"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12)
    assert metrics["threshold_source"] == "auto (same split)"
    assert "| **Overall (micro over sources)** | 12 |" in (out / "metrics.md").read_text()

    # the honest protocol through the CLI: the threshold tuned on another split's predictions file
    out2 = workspace / "out2"
    args = ["eval", "--model", str(workspace / "prm"), "--benchmark", str(workspace / "bench")]
    args += ["--output-dir", str(out2), "--threshold-from", str(out / "predictions.jsonl"), "--max-rows", "3"]
    assert main(args) == 0
    honest = json.loads((out2 / "metrics.json").read_text())
    assert honest["threshold"] == metrics["threshold"] and honest["rows"] == 3
    assert honest["threshold_source"] == f"auto (separate split: {out / 'predictions.jsonl'})"


@pytest.mark.slow
def test_eval_with_two_processes_matches_one(workspace):
    single = workspace / "single"
    common = ["--model", str(workspace / "prm"), "--benchmark", str(workspace / "bench"), "--batch-size", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    assert main(["eval", *common, "--output-dir", str(single)]) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    launch += ["--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bis_prm", "eval", *common]
    run = subprocess.run([*launch, "--output-dir", str(workspace / "multi")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((workspace / "multi" / "metrics.json").read_text())
    assert two == one
    lines = (single / "predictions.jsonl").read_text().splitlines()
    multi_lines = (workspace / "multi" / "predictions.jsonl").read_text().splitlines()
    for a, b in zip(lines, multi_lines, strict=True):
        a, b = json.loads(a), json.loads(b)
        assert a["index"] == b["index"] and a["scores"] == pytest.approx(b["scores"], abs=1e-5)
