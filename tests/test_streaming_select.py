"""`bis-prm select --streaming` writes the bytes and the report of the in-memory path, block by block, on clean and
hostile corpora, for every method and output kind."""

import json

import pytest

import bis_prm.data.streaming
import bis_prm.data.visualprm400k
from bis_prm.cli import main
from bis_prm.data.selection import METHODS
from bis_prm.data.visualprm400k import iter_annotation_blocks, read_annotation_file
from bis_prm.testing import make_corpus
from tests.utils import DIRTY_LINES, _rollout, write_dirty_corpus

# small blocks, so that every file spans several of them and rows of one file are picked across blocks
BLOCK_SIZE = 8 << 10
OUTPUTS = [("hf", "subset.jsonl", []), ("hf", "subset.parquet", []), ("internvl", "subset.jsonl", [])]
OUTPUTS += [("internvl", "subset.jsonl", ["--label-mode", "soft"])]

HOSTILE_LINES = [
    _rollout(question="café").encode().replace("café".encode(), b"caf\xff"),  # invalid_utf8
    _rollout(steps=["SURROGATE", "b"]).encode().replace(b"SURROGATE", b"x \\ud83d y"),  # invalid_text
    _rollout(steps=["NUL", "b"]).encode().replace(b"NUL", b"a\\u0000b"),  # an escaped control character: invalid_text
    _rollout(scores=(1,)).encode().replace(b'"score": 1}', b'"score": ' + b"9" * 400 + b"}"),  # score_out_of_range
    _rollout(deep=0).encode().replace(b'"deep": 0', b'"deep": ' + b"[" * 1000 + b"]" * 1000),  # valid
    b'{"image": "img/a.png", "x": ' + b"[" * 1000 + b"]" * 1000,  # broken_json
    _rollout(steps=["long " * 3000, "b"], scores=(0.5, 0.25)).encode(),  # a line longer than a block
    _rollout(image="../../outside.png").encode(),  # image_outside_root
    _rollout(question="pair \U0001f600 ok", scores=(0.125, 0.5, 1.0)).encode(),  # valid
]


def select(*args) -> int:
    return main(["select", *map(str, args)])


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(bis_prm.data.streaming, "DEFAULT_BLOCK_SIZE", BLOCK_SIZE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Clean sources (str and list images in one file, a blank line mid-file), the dirty lines of the CLI tests, and
    odd corners: a BOM, CRLF line ends without a final one, hostile lines, an empty, a blank-only and an all-invalid
    file."""
    root = tmp_path_factory.mktemp("corpus")
    annotations = make_corpus(root, num_sources=3, rollouts_per_source=40, seed=3, list_image_sources=2)
    path = annotations / "source_01.jsonl"
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join(lines[:17] + ["", "  "] + lines[17:]), encoding="utf-8")
    write_dirty_corpus(root / "dirty")
    for dirty in sorted((root / "dirty" / "annotations").iterdir()):
        (annotations / dirty.name).write_bytes(dirty.read_bytes())
    (annotations / "bom_crlf.jsonl").write_bytes(
        b"\xef\xbb\xbf" + b"\r\n".join([*HOSTILE_LINES[:4], b"", *HOSTILE_LINES[4:]] * 2)
    )
    (annotations / "empty.jsonl").write_bytes(b"")
    (annotations / "blank_only.jsonl").write_bytes(b"\n  \n\n")
    (annotations / "all_invalid.jsonl").write_text("\n".join(line for line, r in DIRTY_LINES if r) + "\n")
    return root


def _run_both(corpus, tmp_path, output: str, *args) -> dict:
    """Run the in-memory and the streaming selection into sibling folders; assert every file they write is the
    same, byte for byte; return the report."""
    written = {}
    for mode in ("in_memory", "streaming"):
        folder = tmp_path / mode
        outputs = [
            "--output",
            folder / output,
            "--report",
            folder / "report.json",
            "--dropped",
            folder / "dropped.jsonl",
        ]
        assert (
            select("--annotations-dir", corpus, *outputs, *args, *(["--streaming"] if mode == "streaming" else []))
            == 0
        )
        written[mode] = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    assert sorted(written["streaming"]) == sorted(written["in_memory"])
    for name, data in written["in_memory"].items():
        assert written["streaming"][name] == data, name
    return json.loads(written["streaming"]["report.json"])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("format, output, extra", OUTPUTS)
def test_same_bytes_and_report_as_in_memory(corpus, tmp_path, method, format, output, extra):
    report = _run_both(corpus, tmp_path, output, "--method", method, "--format", format, "--ratio", 0.3, "--seed", 7,
                       *extra)  # fmt: skip
    assert report["total"]["kept"] > 0 and report["dropped_rows"]
    assert report["sources"]["empty"]["read"] == 0 and report["sources"]["all_invalid"]["kept"] == 0


def test_hostile_lines_are_dropped_with_their_reason_and_line(corpus, tmp_path):
    report = _run_both(corpus, tmp_path, "full.jsonl", "--method", "full", "--tau", 0.3, "--alpha", 0.05)
    dropped = {(row["file"], row["line"]): reason for reason, rows in report["dropped_rows"].items() for row in rows}
    # 9 hostile lines and a blank one, written twice: lines 1-4 and 6-10, then 11-14 and 16-20
    expected = ["invalid_utf8", "invalid_text", "invalid_text", "score_out_of_range"]
    expected += [None, "broken_json", None, "image_outside_root", None]
    for copy in (0, 10):
        for line, reason in zip([1, 2, 3, 4, 6, 7, 8, 9, 10], expected, strict=True):
            assert dropped.get(("bom_crlf.jsonl", line + copy)) == reason
    assert report["sources"]["bom_crlf"] == {**report["sources"]["bom_crlf"], "read": 18, "valid": 6, "kept": 6}
    assert report["sources"]["blank_only"]["read"] == 0


def test_nothing_kept(tmp_path):
    annotations = tmp_path / "corpus" / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "bad.jsonl").write_text("\n".join(line for line, reason in DIRTY_LINES if reason) + "\n")
    for output in ("none.jsonl", "none.parquet"):
        report = _run_both(annotations.parent, tmp_path / output, output)
        assert report["total"]["kept"] == 0


def test_more_rows_than_a_batch_and_list_images_after_the_first_mib(tmp_path, monkeypatch):
    # 1 100 rows kept in one source: several 1000-row batches of the hf formats; its list images come after its first
    # MiB, which chose the parse schema of the whole file
    monkeypatch.setattr(bis_prm.data.streaming, "DEFAULT_BLOCK_SIZE", 256 << 10)
    annotations = make_corpus(tmp_path / "corpus", num_sources=2, rollouts_per_source=800, list_image_sources=0)
    lists = make_corpus(tmp_path / "lists", num_sources=1, rollouts_per_source=300, list_image_share=1.0)
    path = annotations / "source_00.jsonl"
    assert path.stat().st_size > 1 << 20 and b'"image": [' not in path.read_bytes()
    path.write_bytes(path.read_bytes() + (lists / "source_00.jsonl").read_bytes())
    for output in ("full.parquet", "full.jsonl"):
        report = _run_both(annotations.parent, tmp_path / output, output, "--method", "full")
        assert report["total"]["kept"] == 1900


def test_blocks_hold_the_rows_of_the_file(corpus):
    for path in sorted((corpus / "annotations").glob("*.jsonl")):
        whole = read_annotation_file(path, image_root=corpus)
        for block_size in (1, 700, 1 << 20):
            blocks = list(iter_annotation_blocks(path, image_root=corpus, block_size=block_size))
            rows = [row for block in blocks for row in block.rows.to_pylist()]
            assert json.dumps(rows) == json.dumps(whole.drop_columns(["file_lines"]).to_pylist())  # NaN scores too
            lines = sum(block.num_lines for block in blocks)
            assert whole.num_rows == 0 or lines == whole.column("file_lines")[0].as_py()


def test_streaming_reads_blocks_never_the_corpus(corpus, tmp_path, monkeypatch):
    sizes = []
    read_lines = bis_prm.data.visualprm400k._read_lines
    monkeypatch.setattr(bis_prm.data.visualprm400k, "_read_lines", lambda data, *a: sizes.append(len(data)) or
                        read_lines(data, *a))  # fmt: skip
    monkeypatch.setattr(bis_prm.data.visualprm400k, "read_annotation_file", lambda *a, **k: pytest.fail("read all"))
    assert select("--annotations-dir", corpus, "--output", tmp_path / "s.jsonl", "--streaming") == 0
    longest_line = max(len(line) for line in HOSTILE_LINES)
    assert sizes and max(sizes) <= BLOCK_SIZE + longest_line


def test_plot_and_a_changed_corpus(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.jsonl"
    assert select("--annotations-dir", corpus, "--output", out, "--plot", tmp_path / "s.png", "--streaming") == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out

    # a file rewritten between the two passes is an error, not a wrong subset
    first_pass = bis_prm.data.streaming._first_pass

    def first_pass_then_edit(files, *args):
        result = first_pass(files, *args)
        files[0].write_bytes(files[0].read_bytes() + b"\n")
        return result

    copy = tmp_path / "copy" / "annotations"
    copy.mkdir(parents=True)
    for path in (corpus / "annotations").glob("source_*.jsonl"):
        (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(bis_prm.data.streaming, "_first_pass", first_pass_then_edit)
    assert select("--annotations-dir", copy, "--output", tmp_path / "changed.jsonl", "--streaming") == 2
    assert "changed during the streaming selection" in capsys.readouterr().err
    assert not (tmp_path / "changed.jsonl").exists() and not list(tmp_path.glob(".changed.jsonl*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--output", "{tmp}/subset_dir"], "--streaming writes a .jsonl or .parquet file"),
        (["--push-to-hub", "me/subset"], "--push-to-hub needs the subset in memory: run without --streaming"),
        (["--num-proc", "2"], "--streaming reads one file at a time"),
    ],
)
def test_unsupported_combinations_fail_in_one_line(corpus, tmp_path, capsys, args, message):
    base = ["--annotations-dir", corpus, "--output", tmp_path / "out.jsonl", "--streaming"]
    assert select(*base, *[arg.format(tmp=tmp_path) for arg in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bis-prm select: error: ") and message in err[0], err


def test_public_name():
    import bis_prm

    assert bis_prm.stream_selection is bis_prm.data.streaming.stream_selection


def test_a_stepwise_corpus_is_refused(tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "Q", "completions": ["a"], "labels": [True]}) + "\n")
    assert select("--annotations-dir", tmp_path / "rows.jsonl", "--output", tmp_path / "o.jsonl", "--streaming") == 2
    assert "stepwise corpus" in capsys.readouterr().err
