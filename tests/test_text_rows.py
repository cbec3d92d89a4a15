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
DROPPED = {"mixed": {"missing_image": 2, "blank_step": 1, "image_outside_root": 1}}


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
