"""`bis-prm eval` on benchmarks in the real VisualProcessBench layout, clean and hostile."""

import json
import os
import struct
import subprocess
import sys
import zlib

import pytest

from bis_prm.cli import main
from bis_prm.evaluation.runner import EvalConfig, evaluate_prm, read_predictions
from bis_prm.model.inference import score_steps
from bis_prm.model.modeling_prm import load_prm
from bis_prm.testing import VISUALPROCESSBENCH_SOURCES, write_visualprocessbench
from tests.oracles.reference_visualprocessbench import reference_visualprocessbench
from tests.utils import REPO_ROOT, image, tiny_base

# a source the paper does not name: every source of the file is evaluated, whatever its name
UNSEEN_SOURCE = "ChartQA_TEST"


def _png_bomb(width: int, height: int) -> bytes:
    """A small PNG file whose header claims `width x height` pixels: a decompression bomb for whoever decodes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny saved PRM, and a 24-row benchmark in the real layout plus a row of an unseen source."""
    root = tmp_path_factory.mktemp("eval")
    model, processor = load_prm(tiny_base("qwen2_5_vl", tmp_path_factory), head="linear")
    model.save_pretrained(root / "prm")
    processor.save_pretrained(root / "prm")
    bench = write_visualprocessbench(root / "bench", rows=24, image_side=(28, 64), steps=(2, 6), two_image_share=0.25)
    lines = (bench / "test.jsonl").read_text(encoding="utf-8").splitlines()
    extra = json.loads(lines[0])
    extra.update(data_source=UNSEEN_SOURCE, image="images/extra.png", difficulty="hard")  # a string image
    image("orange", (40, 30)).save(bench / "images" / "extra.png")
    (bench / "test.jsonl").write_text("\n".join([*lines, json.dumps(extra)]) + "\n", encoding="utf-8")
    return root


def _eval(workspace, bench, out, *extra) -> int:
    args = ["eval", "--model", str(workspace / "prm"), "--benchmark", str(bench), "--output-dir", str(out)]
    return main([*args, "--num-workers", "0", *extra])


def _predictions(out) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {row["line"]: row for row in rows}


@pytest.fixture(scope="module")
def clean_run(workspace):
    out = workspace / "clean"
    assert _eval(workspace, workspace / "bench", out, "--batch-size", "4", "--max-batch-tokens", "4000") == 0
    return out


def test_every_source_of_the_real_layout_is_scored_under_its_own_name(workspace, clean_run):
    records = [json.loads(line) for line in (workspace / "bench" / "test.jsonl").read_text().splitlines()]
    metrics = json.loads((clean_run / "metrics.json").read_text())
    assert metrics["rows"] == metrics["rows_read"] == len(records) == 25 and metrics["skipped"] == {}
    assert set(metrics["per_source"]) == {record["data_source"] for record in records}
    assert UNSEEN_SOURCE in metrics["per_source"] and set(metrics["per_source"]) - {UNSEEN_SOURCE} <= set(
        VISUALPROCESSBENCH_SOURCES
    )
    assert any(len(record["image"]) == 2 for record in records)  # a two-image row is among them
    counted = sum(1 for record in records for y in record["response"]["process_correctness"] if y != 0)
    assert metrics["total_steps"] == counted < sum(len(r["response"]["steps"]) for r in records)  # 0 is neutral
    table = (clean_run / "metrics.md").read_text()
    assert "| MathVerse |" in table and "MathVerse = `MathVerse_MINI_Vision_Only`" in table
    assert "Skipped rows: none." in table
    # the numbers are the reference evaluator's on these predictions
    expected = reference_visualprocessbench(*read_predictions(clean_run / "predictions.jsonl"), 0.5)
    assert metrics["micro_over_sources"] == pytest.approx(expected["micro_over_sources"], abs=1e-12)


def test_predictions_are_the_scores_of_each_row_on_its_own(workspace, clean_run):
    model, processor = load_prm(workspace / "prm")
    records = [json.loads(line) for line in (workspace / "bench" / "test.jsonl").read_text().splitlines()]
    predictions = _predictions(clean_run)
    assert sorted(predictions) == list(range(1, len(records) + 1))
    for line, record in enumerate(records, start=1):
        images = record["image"] if isinstance(record["image"], list) else [record["image"]]
        row = {
            "image": [str(workspace / "bench" / path) for path in images],
            "question": record["question"],
            "steps": record["response"]["steps"],
        }
        [alone] = score_steps(model, processor, [row], batch_size=1)
        assert predictions[line]["index"] == line - 1 and predictions[line]["data_source"] == record["data_source"]
        assert predictions[line]["references"] == record["response"]["process_correctness"]
        assert predictions[line]["scores"] == pytest.approx(alone, abs=1e-5)
    # the steps of a row are told apart, so a runner that mixed up their order would fail above
    assert all(len(set(row["scores"])) == len(row["scores"]) for row in predictions.values())


def test_loader_workers_and_batching_do_not_change_the_scores(workspace, clean_run):
    out = workspace / "workers"
    args = ["--batch-size", "1", "--num-workers", "2"]
    assert _eval(workspace, workspace / "bench", out, *args) == 0
    one_by_one, batched = _predictions(out), _predictions(clean_run)
    for line, row in batched.items():
        assert one_by_one[line]["scores"] == pytest.approx(row["scores"], abs=1e-5)


@pytest.fixture(scope="module")
def hostile(workspace, clean_run):
    """The clean benchmark with every kind of bad row inserted, at known 1-based lines."""
    bench = workspace / "hostile"
    bench.mkdir()
    clean = workspace / "bench"
    (bench / "images").symlink_to(clean / "images", target_is_directory=True)
    images = bench / "bad_images"
    images.mkdir()
    (images / "corrupt.png").write_bytes(b"\x89PNG not really an image" * 10)
    (images / "empty.png").write_bytes(b"")
    (images / "bomb.png").write_bytes(_png_bomb(60_000, 60_000))
    image("red", (48, 48)).save(images / "whole.png")
    (images / "truncated.png").write_bytes((images / "whole.png").read_bytes()[:60])  # header fine, pixels cut
    lines = (clean / "test.jsonl").read_bytes().splitlines()
    template = json.loads(lines[1])

    def row(**changes) -> bytes:
        record = json.loads(json.dumps(template))
        for key, value in changes.items():
            if key in ("steps", "process_correctness"):
                record["response"][key] = value
            else:
                record[key] = value
        return json.dumps(record, ensure_ascii=False).encode("utf-8")

    n = len(template["response"]["steps"])
    bad = [
        ("image_unreadable", row(image=["bad_images/corrupt.png"])),
        ("image_unreadable", row(image=["bad_images/empty.png"])),
        ("image_too_large", row(image=["bad_images/bomb.png"])),
        ("image_unreadable", row(image=["bad_images/truncated.png"])),  # found when decoding, in the loader
        ("missing_image", row(image=["bad_images/nowhere.png"])),
        ("no_steps", row(steps=[], process_correctness=[])),
        ("step_token_in_text", row(steps=["a <prm> b"] + template["response"]["steps"][1:])),
        ("wrong_type", row(steps="one long string")),
        ("wrong_type", row(question=["not", "a", "string"])),
        ("wrong_type", row(process_correctness="1,1")),
        ("bad_label", row(process_correctness=[2] * n)),
        ("length_mismatch", row(process_correctness=[1])),
        ("missing_fields", row(response=None)),
        ("invalid_text", row(question="SURROGATE").replace(b"SURROGATE", b"\\ud83d lone surrogate")),
        ("undecodable_line", row(question="QUESTION").replace(b"QUESTION", b"caf\xe9")),
        ("broken_json", b'{"image": ["images/x.png"], "response": {'),
    ]
    out_lines, expected = [], {}
    for k, line in enumerate(lines):
        out_lines.append(line)
        if k < len(bad):
            reason, bad_line = bad[k]
            out_lines.append(bad_line)
            expected.setdefault(reason, []).append(len(out_lines))
    (bench / "test.jsonl").write_bytes(b"\n".join(out_lines) + b"\n")
    out = workspace / "hostile_out"
    assert _eval(workspace, bench, out, "--batch-size", "4", "--max-batch-tokens", "4000") == 0
    return bench, out, expected


@pytest.mark.parametrize(
    "reason",
    [
        "image_unreadable",
        "image_too_large",
        "missing_image",
        "no_steps",
        "step_token_in_text",
        "wrong_type",
        "bad_label",
        "length_mismatch",
        "missing_fields",
        "invalid_text",
        "undecodable_line",
        "broken_json",
    ],
)
def test_each_bad_row_is_skipped_with_its_reason_and_line(hostile, reason):
    _, out, expected = hostile
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"][reason]["lines"] == expected[reason]
    assert metrics["skipped"][reason]["count"] == len(expected[reason])
    table = (out / "metrics.md").read_text()
    assert f"- {reason}: {len(expected[reason])} (lines {', '.join(map(str, expected[reason]))})" in table


def test_bad_rows_leave_every_other_row_scored_as_in_a_clean_run(workspace, clean_run, hostile):
    bench, out, expected = hostile
    metrics = json.loads((out / "metrics.json").read_text())
    clean_metrics = json.loads((clean_run / "metrics.json").read_text())
    assert sum(entry["count"] for entry in metrics["skipped"].values()) == sum(map(len, expected.values())) == 16
    assert metrics["rows"] == clean_metrics["rows"] and metrics["rows_read"] == clean_metrics["rows_read"] + 16
    hostile_rows = list(_predictions(out).values())
    clean_rows = list(_predictions(clean_run).values())
    for got, want in zip(hostile_rows, clean_rows, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5) and got["data_source"] == want["data_source"]
    assert (
        metrics["per_source"] == clean_metrics["per_source"] and metrics["total_steps"] == clean_metrics["total_steps"]
    )
    assert metrics["micro_over_sources"] == pytest.approx(clean_metrics["micro_over_sources"], abs=1e-12)


def test_a_bom_and_crlf_line_ends_are_read_as_written(workspace, clean_run, tmp_path):
    bench = tmp_path / "crlf"
    bench.mkdir()
    (bench / "images").symlink_to(workspace / "bench" / "images", target_is_directory=True)
    text = (workspace / "bench" / "test.jsonl").read_bytes()
    (bench / "test.jsonl").write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
    out = tmp_path / "out"
    assert _eval(workspace, bench, out, "--batch-size", "4", "--max-batch-tokens", "4000") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == {} and metrics["rows"] == 25
    for got, want in zip(_predictions(out).values(), _predictions(clean_run).values(), strict=True):
        assert got["scores"] == want["scores"]  # same batches, same numbers


def test_a_sources_filter_says_what_it_left_out(workspace, tmp_path, capsys):
    out = tmp_path / "filtered"
    assert _eval(workspace, workspace / "bench", out, "--sources", UNSEEN_SOURCE, "DynaMath") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_source"]) <= {UNSEEN_SOURCE, "DynaMath"} and UNSEEN_SOURCE in metrics["per_source"]
    excluded = metrics["excluded_by_sources"]
    assert sum(excluded.values()) == 25 - metrics["rows"] > 0 and "DynaMath" not in excluded
    assert "left out by the `sources` filter" in (out / "metrics.md").read_text()
    assert "left out by --sources" in capsys.readouterr().out


def test_no_usable_row_is_an_error_in_one_line(workspace, tmp_path, capsys):
    (tmp_path / "test.jsonl").write_text("{broken\n" + json.dumps({"question": "q"}) + "\n")
    assert _eval(workspace, tmp_path, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"bis-prm eval: error: no row of {tmp_path / 'test.jsonl'} could be read (broken_json: 1, missing_fields: 1)"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{root}/absent"], "model path {root}/absent does not exist"),
        (["--model", "{base}"], "is not a PRM (its config.json has no prm_head)"),
        (["--model", "{root}/bench"], "{root}/bench is not a model directory (no config.json)"),
        (["--threshold", "1.5"], "argument --threshold: must be in [0, 1], got 1.5"),
        (["--output-dir", "{root}/bench/test.jsonl/out"], "is not a writable directory"),
        (["--benchmark", "{root}/absent_bench"], "benchmark {root}/absent_bench does not exist"),
        (["--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    ],
)
def test_user_mistakes_are_one_line_errors_before_any_work(
    workspace, tmp_path_factory, monkeypatch, capsys, args, message
):
    import bis_prm.evaluation.runner

    monkeypatch.setattr(bis_prm.evaluation.runner, "_load_model", lambda *a: pytest.fail("the model was loaded"))
    values = {"root": str(workspace), "base": str(tiny_base("qwen2_5_vl", tmp_path_factory))}
    defaults = {"--model": "{root}/prm", "--benchmark": "{root}/bench", "--output-dir": "{root}/err_out"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["eval"] + [item for key, value in {**defaults, **given}.items() for item in (key, value.format(**values))]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own checks
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("bis-prm eval: error: ") and message.format(**values) in err[0]


def test_threshold_tuned_on_another_split(workspace, clean_run, tmp_path):
    config = EvalConfig(
        model=str(workspace / "prm"),
        benchmark=str(workspace / "bench"),
        output_dir=str(tmp_path / "auto"),
        threshold="auto",
        num_workers=0,
    )
    metrics = evaluate_prm(config)
    expected = reference_visualprocessbench(*read_predictions(tmp_path / "auto" / "predictions.jsonl"), "auto")
    assert metrics["threshold"] == expected["threshold"] and metrics["threshold_source"] == "auto (same split)"
    out = tmp_path / "honest"
    args = ["--threshold-from", str(tmp_path / "auto" / "predictions.jsonl"), "--max-rows", "3"]
    assert _eval(workspace, workspace / "bench", out, *args) == 0
    honest = json.loads((out / "metrics.json").read_text())
    assert honest["threshold"] == metrics["threshold"] and honest["rows"] == 3
    assert honest["threshold_source"] == f"auto (separate split: {tmp_path / 'auto' / 'predictions.jsonl'})"


def test_two_processes_give_the_scores_of_one(workspace, clean_run, tmp_path):
    """`accelerate launch --num_processes 2`: batches are dealt whole, so the scores are those of one process."""
    out = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines"]
    launch += ["1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bis_prm", "eval", "--num-workers", "0"]
    launch += ["--model", str(workspace / "prm"), "--benchmark", str(workspace / "bench"), "--output-dir", str(out)]
    launch += ["--batch-size", "4", "--max-batch-tokens", "4000"]
    run = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text()) == json.loads((clean_run / "metrics.json").read_text())
    assert _predictions(out) == _predictions(clean_run)
