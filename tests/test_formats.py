import json
import os

import datasets
import pyarrow as pa
import pytest

from bis_prm.data.formats import PRM_COLUMNS, internvl_lines, to_prm_format, write_subset
from bis_prm.data.scoring import score_rollouts


@pytest.fixture
def scored():
    ds = datasets.Dataset.from_dict(
        {
            "source": ["ai2d", "mmmu"],
            "line": [0, 3],
            "image": [["ai2d/1.png"], ["mmmu/1.png", "mmmu/2.png"]],
            "image_is_list": [False, True],
            "question": ["<image>\nWhat is shown? ", "<image>\nQ2"],
            "question_orig": ["", " Which “angle” is 90°? "],
            "steps": [[" Step 1: look. ", "Step 2: 中文\n"], ["only step"]],
            "mc_scores": [[0.5, 0.0], [1.0]],
            "invalid_reason": ["", ""],
        }
    )
    return score_rollouts(ds, alpha=0.2)


def test_internvl_records_are_the_reference_bytes(scored):
    lines = internvl_lines(scored.with_format("arrow")[:]).to_pylist()
    assert lines == [
        '{"image": "ai2d/1.png", "conversations": [{"from": "human", "value": "Question: <image>\\nWhat is shown?\\n'
        'Process: Step 1: look.<prm>\\n\\nStep 2: 中文<prm>"}, {"from": "gpt", "value": [1.0, 0.0]}]}',
        '{"image": ["mmmu/1.png", "mmmu/2.png"], "conversations": [{"from": "human", "value": "Question: Which '
        '“angle” is 90°?\\nProcess: only step<prm>"}, {"from": "gpt", "value": [1.0]}]}',
    ]


def test_prm_format(scored, tmp_path):
    prm = to_prm_format(scored, image_root=tmp_path)
    assert prm.column_names == list(PRM_COLUMNS)
    # paths stay as the corpus wrote them, next to the root they are relative to
    assert prm["image"] == [["ai2d/1.png"], ["mmmu/1.png", "mmmu/2.png"]]
    assert prm["image_root"] == [str(tmp_path.resolve())] * 2
    assert prm["question"] == ["<image>\nWhat is shown?", "Which “angle” is 90°?"]
    assert prm["steps"] == [["Step 1: look.", "Step 2: 中文"], ["only step"]]
    assert prm["labels"] == [[1.0, 0.0], [1.0]] and prm["mc_scores"] == [[0.5, 0.0], [1.0]]
    assert to_prm_format(scored)["image_root"] == [None, None]


@pytest.mark.parametrize("name", ["subset.jsonl", "subset.parquet", "subset_dir"])
def test_hf_writers_round_trip(scored, tmp_path, name):
    path = tmp_path / name
    write_subset(scored, path, format="hf", image_root="/data")
    if name.endswith(".jsonl"):
        loaded = datasets.load_dataset("json", data_files=str(path), split="train")
    elif name.endswith(".parquet"):
        loaded = datasets.Dataset.from_parquet(str(path))
    else:
        loaded = datasets.load_from_disk(str(path))
    expected = to_prm_format(scored, image_root="/data").to_dict()
    # the root is recorded relative to the subset's location, so that both can move together
    base = path if name == "subset_dir" else path.parent
    expected["image_root"] = [os.path.relpath("/data", base)] * 2
    assert loaded.to_dict() == expected and expected["image_root"][0].startswith("../")


def test_internvl_writer_and_bad_format(scored, tmp_path):
    write_subset(scored, tmp_path / "out.jsonl", format="internvl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["conversations"][1]["value"] for row in rows] == [[1.0, 0.0], [1.0]]
    with pytest.raises(ValueError, match="unknown output format"):
        write_subset(scored, tmp_path / "out.jsonl", format="csv")
    with pytest.raises(ValueError, match=r"the hf format is written to a \.jsonl or \.parquet file or a directory"):
        write_subset(scored, tmp_path / "out.csv")


def test_internvl_lines_escape_like_json_dumps():
    texts = [
        'quote " back \\ slash',
        "tab\t nl\n cr\r bell\x07 nul\x00 \x1f",
        "uni é 中文 \u2028 \x7f",
        "\x1c pad \u3000",
    ]
    batch = {
        "image": [[t] for t in texts],
        "image_is_list": [True, False, True, False],
        "question": texts,
        "question_orig": ["", "", texts[0], ""],
        "steps": [[t, " x "] for t in texts],
        "labels": [[1.0, 0.0]] * 4,
    }
    expected = []
    for i, text in enumerate(texts):
        question = (batch["question_orig"][i] or text).strip()
        human = f"Question: {question}\nProcess: {text.strip()}<prm>\n\nx<prm>"
        record = {"image": [text] if batch["image_is_list"][i] else text, "conversations": [
            {"from": "human", "value": human}, {"from": "gpt", "value": [1.0, 0.0]}]}  # fmt: skip
        expected.append(json.dumps(record, ensure_ascii=False))
    assert internvl_lines(pa.table(batch)).to_pylist() == expected
