import json
import shutil
import zipfile

import pyarrow as pa
import pytest

from bis_prm.data import visualprm400k
from bis_prm.data.visualprm400k import load_visualprm400k, read_annotation_file, resolve_visualprm400k
from bis_prm.testing import make_corpus
from tests.utils import DIRTY_LINES, write_dirty_corpus


def test_clean_corpus_rows_match_the_raw_lines(tmp_path):
    annotations = make_corpus(tmp_path, num_sources=3, rollouts_per_source=40, list_image_sources=1)
    ds = load_visualprm400k(tmp_path)
    assert len(ds) == 120
    assert ds["source"] == [f"source_{s:02d}" for s in range(3) for _ in range(40)]
    assert ds["line"] == list(range(40)) * 3
    raw = [json.loads(line) for path in sorted(annotations.glob("*.jsonl")) for line in path.read_text().splitlines()]
    assert ds["invalid_reason"] == [""] * 120
    assert ds["mc_scores"] == [[s["score"] for s in r["steps_with_score"]] for r in raw]
    assert ds["steps"] == [[s["step"] for s in r["steps_with_score"]] for r in raw]
    assert ds["image_is_list"] == [isinstance(r["image"], list) for r in raw]
    assert any(ds["image_is_list"]) and not all(ds["image_is_list"])
    assert ds["image"] == [r["image"] if isinstance(r["image"], list) else [r["image"]] for r in raw]
    assert ds["question_orig"] == [r["question_orig"] for r in raw]


def test_every_bad_input_kind_gets_its_reason(tmp_path):
    annotations = write_dirty_corpus(tmp_path, copies=1)
    table = read_annotation_file(annotations / "dirty_0.jsonl")
    expected = [(i, reason) for i, (_, reason) in enumerate(DIRTY_LINES) if reason is not None]
    lines, reasons = table.column("line").to_pylist(), table.column("invalid_reason").to_pylist()
    assert list(zip(lines, reasons, strict=True)) == expected
    assert set(table.column("file_lines").to_pylist()) == {len(DIRTY_LINES) + 1}
    valid = table.filter(pa.compute.equal(table.column("invalid_reason"), ""))
    # the second valid rollout is text-only (`"image": []`)
    assert valid.column("mc_scores").to_pylist() == [
        [0.5, 0.0],
        [1.0, 0.0],
        [0.0, 0.0],
        [1.0, 0.0],
        [0.875, 0.125, 0.0],
    ]
    assert valid.column("image_is_list").to_pylist() == [False, True, True, False, False]
    assert valid.column("image").to_pylist()[1] == []


def test_one_broken_line_only_costs_its_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(visualprm400k, "_FALLBACK_CHUNK_LINES", 10)
    annotations = make_corpus(tmp_path, num_sources=1, rollouts_per_source=50, list_image_sources=0)
    path = annotations / "source_00.jsonl"
    lines = path.read_text().splitlines()
    lines[23] = lines[23][:40]
    path.write_text("\n".join(lines) + "\n")
    calls = []
    python_parse = visualprm400k._python_to_columns
    monkeypatch.setattr(
        visualprm400k, "_python_to_columns", lambda chunk: calls.append(len(chunk)) or python_parse(chunk)
    )
    table = read_annotation_file(path)
    assert calls == [10]
    reasons = table.column("invalid_reason").to_pylist()
    assert reasons == [""] * 23 + ["broken_json"] + [""] * 26


def test_local_zip_is_extracted_once(tmp_path):
    make_corpus(tmp_path / "corpus", num_sources=2, rollouts_per_source=5)
    archive = shutil.make_archive(str(tmp_path / "corpus"), "zip", tmp_path / "corpus")
    assert zipfile.is_zipfile(archive)
    cache = tmp_path / "cache"
    from_zip = load_visualprm400k(archive, cache_dir=cache)
    assert from_zip.to_dict() == load_visualprm400k(tmp_path / "corpus").to_dict()
    annotations_dir, root = resolve_visualprm400k(archive, cache_dir=cache)
    (annotations_dir / "source_00.jsonl").unlink()  # a second call must not extract again
    assert resolve_visualprm400k(archive, cache_dir=cache) == (annotations_dir, root)
    assert not (annotations_dir / "source_00.jsonl").exists()


def test_missing_directory_and_no_jsonl_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.jsonl"):
        load_visualprm400k(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a corpus"):
        load_visualprm400k(tmp_path / "missing" / "dir")


def test_empty_blank_only_and_crlf_files(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blanks.jsonl").write_bytes(b"\n \n\t\n")
    rollout = b'{"image": "a.png", "steps_with_score": [{"step": "x", "score": 0.5}]}'
    (tmp_path / "crlf.jsonl").write_bytes(rollout + b"\r\n\r\n" + rollout)
    assert read_annotation_file(tmp_path / "empty.jsonl").num_rows == 0
    assert read_annotation_file(tmp_path / "blanks.jsonl").num_rows == 0
    table = read_annotation_file(tmp_path / "crlf.jsonl")
    assert table.column("line").to_pylist() == [0, 2] and table.column("invalid_reason").to_pylist() == ["", ""]


def test_hub_repo_id_downloads_annotations_zip(tmp_path, monkeypatch):
    import huggingface_hub

    make_corpus(tmp_path / "corpus", num_sources=1, rollouts_per_source=3)
    snapshot = tmp_path / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    shutil.make_archive(str(snapshot / "annotations"), "zip", tmp_path / "corpus")
    calls = []

    def fake_download(repo_id, filename, repo_type, revision, cache_dir):
        calls.append((repo_id, filename, repo_type, revision))
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ds = load_visualprm400k("OpenGVLab/VisualPRM400K-v1.1-Raw", revision="v1", cache_dir=tmp_path / "cache")
    assert calls == [("OpenGVLab/VisualPRM400K-v1.1-Raw", "annotations.zip", "dataset", "v1")]
    assert len(ds) == 3 and ds["source"] == ["source_00"] * 3


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_mixed_str_and_list_images_in_any_json_spacing(tmp_path, separators):
    records = [
        {"image": "a.png" if i % 3 else ["a.png", "b.png"], "steps_with_score": [{"step": "s", "score": i / 10}]}
        for i in range(10)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(record, separators=separators) for record in records) + "\n")
    table = read_annotation_file(path)
    assert table.column("image_is_list").to_pylist() == [i % 3 == 0 for i in range(10)]
    assert table.column("image").to_pylist() == [["a.png", "b.png"] if i % 3 == 0 else ["a.png"] for i in range(10)]
    assert table.column("mc_scores").to_pylist() == [[i / 10] for i in range(10)]
