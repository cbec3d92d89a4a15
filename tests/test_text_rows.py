"""Text-only rollouts (`"image": []`, as `bis-prm annotate` writes them) are first-class in the VisualPRM400K-Raw
layout: loaded as valid, selected, written in every output format without images, streamed to the same bytes and
trained on by a text PRM."""

import json

import datasets
import pyarrow.parquet as pq
import pytest

from bis_prm.cli import main
from bis_prm.data.internvl import read_internvl_jsonl
from bis_prm.data.visualprm400k import load_visualprm400k
from bis_prm.model.modeling_prm import load_prm
from bis_prm.training.prm_trainer import PRMTrainer
from bis_prm.training.script import ScriptArguments, load_prm_datasets
from tests.utils import _rollout, tiny_base, tiny_config


def _text(scores=(1.0, 0.0), **extra) -> str:
    fields = {"question": "What is 2 + 2?", "question_orig": "What is 2 + 2?", **extra}
    return _rollout(image=[], scores=scores, **fields)


FILES = {
    "text": [
        _text(),
        _text(scores=(0.5, 0.25, 0.0)),
        _text(question_orig=""),  # the question is taken instead: it holds no <image> token
        _text(scores=(0.125,), extra_field={"unknown": [1, 2]}),
    ],
    "images": [_rollout(image="img/a.png"), _rollout(image=["img/b.png"]), _rollout(image="img/c.png")],
    "mixed": [
        _text(scores=(0.75, 0.5)),
        _rollout(image="img/b.png"),
        _rollout(image=["img/c.png", "img/d.png"], scores=(0.0, 0.0)),
        _rollout(image=None),
        _text(scores=(0.5, 0.5), steps=["ok", "  "]),
        json.dumps({"question": "Q?", "steps_with_score": [{"step": "a", "score": 1.0}]}),
        _rollout(image=""),
        _rollout(image=["img/e.png", "../out.png"]),
    ],
}
KEPT = {"text": [0, 1, 2, 3], "images": [0, 1, 2], "mixed": [0, 1, 2]}
DROPPED = {"mixed": {"missing_image": [4, 6, 7], "blank_step": [5], "image_outside_root": [8]}}  # 1-based lines


def _internvl_text_line(labels: list[float]) -> str:
    """The InternVL line of a kept text-only rollout: `image` as in the file, a prompt without `<image>` token."""
    process = "\\n\\n".join(f"step {i}<prm>" for i in range(len(labels)))
    human = f'{{"from": "human", "value": "Question: What is 2 + 2?\\nProcess: {process}"}}'
    return f'{{"image": [], "conversations": [{human}, {{"from": "gpt", "value": {json.dumps(labels)}}}]}}'


TEXT_LINES = [_internvl_text_line(labels) for labels in ([1.0, 1.0], [1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0], [1.0])]


def select(*args) -> int:
    return main(["select", *map(str, args)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_rows")
    (root / "annotations").mkdir()
    for name, lines in FILES.items():
        (root / "annotations" / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_text_only_rows_load_as_valid_rows_without_images(corpus):
    ds = load_visualprm400k(corpus)
    valid = [(row["source"], row["line"]) for row in ds if row["invalid_reason"] == ""]
    assert valid == [(name, line) for name in sorted(KEPT) for line in KEPT[name]]
    reasons = {(row["source"], row["line"]): row["invalid_reason"] for row in ds}
    assert [reasons["mixed", line] for line in range(3, 8)] == [
        "missing_image", "blank_step", "missing_image", "missing_image", "image_outside_root",
    ]  # fmt: skip
    text = ds.filter(lambda row: row["source"] == "text")
    assert text["image"] == [[]] * 4 and text["image_is_list"] == [True] * 4
    assert text["mc_scores"] == [[1.0, 0.0], [0.5, 0.25, 0.0], [1.0, 0.0], [0.125]]


# the Arrow reader takes a file of these lines; a broken line next to them sends the file to the Python parser
@pytest.mark.parametrize("parser", ["arrow", "python"])
@pytest.mark.parametrize(
    "image, reason",
    [
        ([], ""),
        (["img/a.png"], ""),
        ("img/a.png", ""),
        ("absent", "missing_image"),
        (None, "missing_image"),
        ("", "missing_image"),
        ([""], "missing_image"),
        ([None], "missing_image"),
        (["img/a.png", 3], "missing_image"),
        (7, "missing_image"),
        ({}, "missing_image"),
    ],
)
def test_missing_image_is_kept_for_everything_but_an_empty_list(tmp_path, parser, image, reason):
    line = json.loads(_rollout())
    if image == "absent":
        del line["image"]
    else:
        line["image"] = image
    lines = [json.dumps(line), _text()] + (['{"image": [], "steps_with_score": [{"st'] if parser == "python" else [])
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "a.jsonl").write_text("\n".join(lines) + "\n")
    reasons = load_visualprm400k(tmp_path)["invalid_reason"]
    assert reasons == [reason, ""] + (["broken_json"] if parser == "python" else [])


def test_selection_keeps_text_rows_and_reports_them(corpus, tmp_path):
    assert select("--annotations-dir", corpus / "annotations", "--method", "full", "--output", tmp_path / "s.jsonl",
                  "--report", tmp_path / "report.json") == 0  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    for name, lines in FILES.items():
        source = report["sources"][name]
        assert (source["read"], source["valid"], source["kept"]) == (len(lines), len(KEPT[name]), len(KEPT[name]))
    assert {reason: [row["line"] for row in rows] for reason, rows in report["dropped_rows"].items()} == DROPPED[
        "mixed"
    ]
    assert {row["file"] for rows in report["dropped_rows"].values() for row in rows} == {"mixed.jsonl"}


@pytest.fixture(scope="module")
def subsets(corpus, tmp_path_factory):
    """The full selection of the corpus in every output kind, in memory and streamed."""
    out = tmp_path_factory.mktemp("subsets")
    for mode in ("in_memory", "streaming"):
        for output, extra in [("hf.jsonl", []), ("hf.parquet", []), ("internvl.jsonl", ["--format", "internvl"])]:
            streaming = ["--streaming"] if mode == "streaming" else []
            args = ["--annotations-dir", corpus / "annotations", "--method", "full", *extra, *streaming]
            assert select(*args, "--output", out / mode / output) == 0
    assert select("--annotations-dir", corpus / "annotations", "--method", "full", "--output", out / "hf_dir") == 0
    return out


def test_outputs_hold_text_rows_without_images(subsets):
    rows = [json.loads(line) for line in (subsets / "in_memory" / "hf.jsonl").read_text().splitlines()]
    expected_images = [["img/a.png"], ["img/b.png"], ["img/c.png"], [], ["img/b.png"], ["img/c.png", "img/d.png"]]
    assert [row["image"] for row in rows] == expected_images + [[]] * 4
    assert [row["source"] for row in rows] == ["images"] * 3 + ["mixed"] * 3 + ["text"] * 4
    assert all(row["question"] == "What is 2 + 2?" for row in rows if not row["image"])
    parquet = pq.read_table(subsets / "in_memory" / "hf.parquet")
    assert parquet.column("image").to_pylist() == [row["image"] for row in rows]
    assert datasets.load_from_disk(str(subsets / "hf_dir"))["image"] == [row["image"] for row in rows]
    lines = (subsets / "in_memory" / "internvl.jsonl").read_text(encoding="utf-8").splitlines()
    assert [line for line in lines if line.startswith('{"image": []')] == TEXT_LINES
    assert not any("<image>" in line for line in TEXT_LINES)
    # the reader reads its writer's text-only lines back
    back = read_internvl_jsonl(subsets / "in_memory" / "internvl.jsonl")
    assert back["image"] == [row["image"] for row in rows] and back["steps"] == [row["steps"] for row in rows]


def test_streaming_writes_the_bytes_of_the_in_memory_path(subsets):
    for name in ("hf.jsonl", "hf.parquet", "internvl.jsonl"):
        assert (subsets / "streaming" / name).read_bytes() == (subsets / "in_memory" / name).read_bytes(), name


def test_a_text_prm_trains_on_a_selected_text_only_subset(corpus, tmp_path, tmp_path_factory):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "text.jsonl").write_bytes((corpus / "annotations" / "text.jsonl").read_bytes())
    subset = tmp_path / "subset.jsonl"
    assert select("--annotations-dir", tmp_path / "annotations", "--ratio", 0.5, "--output", subset) == 0
    train, _, _ = load_prm_datasets(ScriptArguments(str(subset)))
    assert len(train) == 2 and train["image"] == [[], []]
    model, tokenizer = load_prm(tiny_base("qwen2", tmp_path_factory))
    args = tiny_config(tmp_path / "out", max_steps=2, per_device_train_batch_size=1)
    trainer = PRMTrainer(model, args=args, train_dataset=train, processing_class=tokenizer)
    assert trainer.dataset_checks["train"].num_dropped() == 0
    trainer.train()
    assert trainer.state.global_step == 2
    assert not trainer.skipped_rollouts["train"]


def test_pushing_with_embedded_images_takes_text_rows(tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from PIL import Image

    from bis_prm.data.dataset_card import push_subset_to_hub
    from tests.test_hub import REPORT

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    seen = {}
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo_id, **kw: seen.update(ds=self, **kw))
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: "url")
    features = datasets.Features(
        {"image": datasets.List(datasets.Value("string")), "image_root": datasets.Value("string")}
    )
    for images in ([[], ["a.png"]], [[], []]):
        prm = datasets.Dataset.from_dict({"image": images, "image_root": [str(tmp_path)] * 2}, features=features)
        push_subset_to_hub(prm, "me/x", REPORT, embed_images=True)
        assert isinstance(seen["ds"].features["image"].feature, datasets.Image)
        assert [[image.size for image in row] for row in seen["ds"]["image"]] == [[], [(4, 4)] * len(images[1])]
