"""`bis-prm select` on corpora built to be nasty: every row is kept, or dropped, counted and located; nothing outside
the corpus root is ever read, and a bad argument fails in one line before any work."""

import json
import multiprocessing
import os
import zipfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from bis_prm.cli import main
from bis_prm.data.selection import run_selection
from bis_prm.data.visualprm400k import resolve_visualprm400k


def _record(image="imgs/ok.png", question="Q?", steps=(("a", 0.5), ("b", 0.0)), **extra) -> dict:
    record = {"image": image, "question": f"<image>\n{question}", "question_orig": question, "answer": "A"}
    record["steps_with_score"] = [{"step": text, "score": score} for text, score in steps]
    return {**record, **extra}


def _line(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


# (line bytes, expected invalid reason or "" for a valid row); files are written in this order
PATHS = [
    (_line(_record()), ""),
    (_line(_record(image="a/../imgs/ok.png")), ""),  # climbs back in: inside the root
    (_line(_record(image="../../../../token")), "image_outside_root"),
    (_line(_record(image="/etc/passwd")), "image_outside_root"),
    (_line(_record(image=["imgs/ok.png", "imgs/link.png"])), "image_outside_root"),  # a link pointing out
    (_line(_record(image="imgs/inner_link.png")), ""),  # a link that stays inside
    (_line(_record(image="linked_dir/secret.png")), "image_outside_root"),  # a folder linked from outside
]
TEXT = [
    (_line(_record(question="café")).replace("café".encode(), b"caf\xff"), "invalid_utf8"),
    (_line(_record(steps=(("SURROGATE", 0.5),))).replace(b"SURROGATE", b"x \\ud83d y"), "invalid_text"),
    (_line(_record(steps=(("ok", 0.5), ("NUL", 0.0)))).replace(b"NUL", b"a\\u0000b"), "invalid_text"),
    (_line(_record(question="\x07 bell")), "invalid_text"),
    (
        _line(_record(steps=(("big", 1),))).replace(b'"score": 1}', b'"score": ' + b"9" * 400 + b"}"),
        "score_out_of_range",
    ),
    (_line(_record(deep=0)).replace(b'"deep": 0', b'"deep": ' + b"[" * 1000 + b"]" * 1000), ""),  # an ignored field
    (b'{"image": "imgs/ok.png", "x": ' + b"[" * 1000 + b"]" * 1000, "broken_json"),
    (_line(_record(question="pair \U0001f600 ok")), ""),  # a valid surrogate pair, written as such
    (_line(_record(question="tab\tand\nnewline")), ""),
]


@pytest.fixture
def corpus(tmp_path):
    """A corpus root with the bad rows above, images, links in and out of the root, and an empty file."""
    root = tmp_path / "corpus"
    (root / "annotations").mkdir(parents=True)
    (root / "imgs").mkdir()
    Image.new("RGB", (8, 8), "red").save(root / "imgs" / "ok.png")
    (tmp_path / "token").write_text("hf_secret_token")
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "outside" / "secret.png")
    os.symlink(tmp_path / "token", root / "imgs" / "link.png")
    os.symlink(root / "imgs" / "ok.png", root / "imgs" / "inner_link.png")
    os.symlink(tmp_path / "outside", root / "linked_dir", target_is_directory=True)
    (root / "annotations" / "paths.jsonl").write_bytes(b"\n".join(line for line, _ in PATHS) + b"\n")
    # a CRLF file with a blank line: lines are counted as written
    text = b"\r\n".join([TEXT[0][0], b"", *(line for line, _ in TEXT[1:])]) + b"\r\n"
    (root / "annotations" / "text.jsonl").write_bytes(text)
    (root / "annotations" / "empty.jsonl").write_bytes(b"")
    return root


def _expected():
    """(file, 1-based line) -> reason, for every row of the corpus."""
    expected = {("paths.jsonl", i + 1): reason for i, (_, reason) in enumerate(PATHS)}
    lines = [1] + list(range(3, len(TEXT) + 2))  # line 2 of text.jsonl is blank
    expected.update({("text.jsonl", line): reason for line, (_, reason) in zip(lines, TEXT, strict=True)})
    return expected


@pytest.mark.parametrize("output", ["full.jsonl", "full.parquet", "full_dir", "internvl.jsonl"])
def test_every_row_is_kept_or_dropped_with_its_file_and_line(corpus, tmp_path, output, capsys):
    out = tmp_path / output
    fmt = "internvl" if output.startswith("internvl") else "hf"
    args = ["select", "--annotations-dir", str(corpus), "--method", "full", "--format", fmt, "--output", str(out)]
    assert main([*args, "--report", str(tmp_path / "report.json"), "--dropped", str(tmp_path / "dropped.jsonl")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    expected = _expected()

    # every dropped row is listed with its file and line, under its reason
    listed = {(row["file"], row["line"]): reason for reason, rows in report["dropped_rows"].items() for row in rows}
    assert listed == {key: reason for key, reason in expected.items() if reason}
    dropped_file = [json.loads(line) for line in (tmp_path / "dropped.jsonl").read_text().splitlines()]
    assert {(row["file"], row["line"]): row["reason"] for row in dropped_file} == listed
    # the accounting adds up, per source and in total, and an empty file shows up with 0 rows
    assert report["sources"]["empty"] == {
        "read": 0,
        "valid": 0,
        "kept": 0,
        "dropped": {reason: 0 for reason in report["total"]["dropped"]},
        "blank_lines": 0,
    }
    assert list(report["sources"]) == ["empty", "paths", "text"]
    assert report["sources"]["text"]["blank_lines"] == 1
    for counts in [*report["sources"].values(), report["total"]]:
        assert counts["kept"] + sum(counts["dropped"].values()) == counts["read"]
    # every valid row is kept by `--method full`
    valid = sum(1 for reason in expected.values() if not reason)
    assert report["total"]["kept"] == report["total"]["valid"] == valid == 6
    assert "empty" in capsys.readouterr().out  # the printed table shows the empty file too

    # the output is valid UTF-8 and no kept row points outside the corpus root
    rows = _read_output(out, fmt)
    assert len(rows) == valid
    real_root = os.path.realpath(corpus)
    for row in rows:
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        root = row.get("image_root") or str(corpus)
        base = out if fmt == "hf" and out.suffix == "" else out.parent
        for image in images:
            resolved = os.path.realpath(os.path.join(base, root, image))
            assert os.path.commonpath([real_root, resolved]) == real_root, image


def _read_output(out, fmt) -> list[dict]:
    if out.suffix == ".parquet":
        return pq.read_table(out).to_pylist()
    if out.suffix == "":
        from datasets import load_from_disk

        return load_from_disk(str(out)).to_list()
    text = out.read_bytes().decode("utf-8")  # raises on invalid UTF-8
    return [json.loads(line) for line in text.splitlines()]


def test_a_subset_records_where_its_images_are_relative_to_itself(corpus, tmp_path):
    out = tmp_path / "subsets" / "bis.jsonl"
    assert main(["select", "--annotations-dir", str(corpus), "--method", "full", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {row["image_root"] for row in rows} == {"../corpus"}
    assert rows[0]["image"] == ["imgs/ok.png"]  # as written in the corpus, never absolute
    report = json.loads((tmp_path / "subsets" / "bis.selection.json").read_text())
    assert report["params"]["method"] == "full" and report["total"]["kept"] == len(rows)


def test_embedding_reads_only_files_inside_the_root(corpus, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    pushed = {}
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_x")
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self: {"name": "me", "orgs": []})
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, *a, **k: pushed.setdefault("ds", self))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", lambda self, **k: "https://hub/commit")
    args = ["select", "--annotations-dir", str(corpus), "--method", "full", "--output", str(tmp_path / "s.parquet")]
    assert main([*args, "--push-to-hub", "me/subset", "--embed-images"]) == 0
    # `push_to_hub(embed_external_files=True)` reads the files these paths name
    embedded = [image["path"] for row in pushed["ds"].data.table.to_pylist() for image in row["image"]]
    assert len(embedded) == 6 and {os.path.realpath(path) for path in embedded} == {str(corpus / "imgs" / "ok.png")}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha", "-5"], "argument --alpha: must be >= 0, got -5"),
        (["--tau", "2"], "argument --tau: must be in [0, 1], got 2"),
        (["--tau", "1"], "argument --tau: must be in [0, 1), got 1"),
        (["--ratio", "0"], "argument --ratio: must be in (0, 1], got 0"),
        (["--output", "{tmp}/x.csv"], "the hf format is written to a .jsonl or .parquet file or a directory"),
        (["--format", "internvl", "--output", "{tmp}/x.parquet"], "the internvl format is written to a .jsonl"),
        (["--push-to-hub", "me/subset"], "pushing to me/subset needs a Hub login"),
        (["--embed-images"], "--embed-images needs --push-to-hub"),
        (["--report", "{tmp}"], "is a directory, not a file"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_reading(corpus, tmp_path, monkeypatch, capsys, args, message):
    import huggingface_hub

    import bis_prm.cli.select

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(bis_prm.cli.select, "run_selection", lambda *a, **k: pytest.fail("the corpus was read"))
    base = ["select", "--annotations-dir", str(corpus), "--output", str(tmp_path / "out.jsonl")]
    try:
        code = main(base + [arg.format(tmp=tmp_path) for arg in args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bis-prm select: error: "), err
    assert message in err[0]


def _resolve_in_process(zip_path, cache_dir, queue):
    try:
        annotations, root = resolve_visualprm400k(zip_path, cache_dir=cache_dir)
        queue.put(("ok", str(annotations), sorted(os.listdir(annotations))))
    except Exception as error:  # reported to the test, which fails with it
        queue.put(("error", repr(error), []))


def test_a_zipped_corpus_is_extracted_once_by_concurrent_processes(corpus, tmp_path):
    zip_path = tmp_path / "corpus.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted((corpus / "annotations").iterdir()):
            zf.write(path, f"annotations/{path.name}")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_resolve_in_process, args=(zip_path, tmp_path / "cache", queue)) for _ in "ab"]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    assert [status for status, _, _ in results] == ["ok", "ok"], results
    assert results[0][1] == results[1][1] and results[0][2] == ["empty.jsonl", "paths.jsonl", "text.jsonl"]
    extracted = [p.name for p in (tmp_path / "cache" / "bis_prm" / "visualprm400k").iterdir() if p.is_dir()]
    assert len(extracted) == 1  # one folder, no leftover staging folder


def test_run_selection_is_the_pipeline_of_the_command(corpus, tmp_path):
    selection = run_selection(corpus, method="full", progress=False)
    assert (
        main(["select", "--annotations-dir", str(corpus), "--method", "full", "--output", str(tmp_path / "s.jsonl")])
        == 0
    )
    assert selection.report == json.loads((tmp_path / "s.selection.json").read_text())
    assert len(selection.to_prm()) == selection.report["total"]["kept"]
