"""The reference code's InternVL conversation JSONL: the soft-label export, reading a file back (hostile lines
included) and training from it exactly as from the HF PRM format."""

import json
import logging
import math
import random

import datasets
import pyarrow as pa
import pytest
import torch

from bis_prm.cli import main as cli
from bis_prm.data import formats
from bis_prm.data.internvl import (
    SKIP_REASONS,
    internvl_lines,
    is_internvl_jsonl,
    parse_prompt,
    read_internvl_jsonl,
    read_internvl_rows,
)
from bis_prm.data.prompt import prompt_column
from bis_prm.model.modeling_prm import load_prm
from bis_prm.testing import make_corpus
from bis_prm.training.dataset import PRMDatasetError
from bis_prm.training.prm_trainer import PRMTrainer
from bis_prm.training.script import ScriptArguments, load_prm_datasets, parse_recipe
from tests.oracles.reference_selection import reference_select
from tests.utils import REPO_ROOT, tiny_base, tiny_config, write_raw_corpus


def select(*args) -> int:
    return cli(["select", *map(str, args)])


def gpt_bytes(line: bytes) -> bytes:
    """The raw bytes of a line's gpt value (the labels part)."""
    start = line.rindex(b'{"from": "gpt", "value": ') + len(b'{"from": "gpt", "value": ')
    assert line.endswith(b"}]}")
    return line[start:-3]


def without_question_orig(path):
    """Empty `question_orig` in every other line: those rollouts keep their `<image>\n...` question."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for record in records[::2]:
        record["question_orig"] = ""
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A generated corpus (string and list images, MC scores in sixteenths) and the subsets `bis-prm select` writes
    from it: HF PRM format, InternVL hard (default and explicit) and InternVL soft, in a folder of their own."""
    root = tmp_path_factory.mktemp("internvl")
    annotations = make_corpus(root / "corpus", num_sources=3, rollouts_per_source=40, seed=3, list_image_share=0.5)
    without_question_orig(annotations / "source_00.jsonl")
    out = root / "subsets"
    paths = {name: out / f"{name}.jsonl" for name in ("hf", "hard", "hard_explicit", "soft")}
    common = ["--annotations-dir", annotations, "--ratio", 0.25, "--alpha", 0.2]
    assert select(*common, "--output", paths["hf"]) == 0
    assert select(*common, "--format", "internvl", "--output", paths["hard"]) == 0
    assert select(*common, "--format", "internvl", "--label-mode", "hard", "--output", paths["hard_explicit"]) == 0
    assert select(*common, "--format", "internvl", "--label-mode", "soft", "--output", paths["soft"]) == 0
    return {"annotations": annotations, "root": root / "corpus", **paths}


# ---- writing: soft labels are the reference's converted_soft, hard labels are unchanged ----


def test_soft_export_is_the_reference_converted_soft_and_hard_is_unchanged(corpus, tmp_path):
    for soft, name in [(False, "hard"), (True, "soft")]:
        reference = tmp_path / f"reference_{name}.jsonl"
        assert reference_select(corpus["annotations"], reference, 0.25, 0.2, soft=soft) == 3 * 10
        assert corpus[name].read_bytes() == reference.read_bytes()
    assert corpus["hard_explicit"].read_bytes() == corpus["hard"].read_bytes()
    assert corpus["soft"].read_bytes() != corpus["hard"].read_bytes()
    # the gpt value of every soft line is json.dumps of the step MC scores of the HF subset, parsed and as bytes
    hf = datasets.load_dataset("json", data_files=str(corpus["hf"]), split="train")
    lines = corpus["soft"].read_bytes().splitlines()
    assert len(lines) == len(hf) == 30
    for line, scores, labels in zip(lines, hf["mc_scores"], hf["labels"], strict=True):
        assert json.loads(line)["conversations"][1]["value"] == scores
        assert gpt_bytes(line) == json.dumps(scores).encode()
        assert [1.0 if score > 0 else 0.0 for score in scores] == labels
    assert sum(0.0 < score < 1.0 for scores in hf["mc_scores"] for score in scores) > 10  # sixteenths, not 0/1


def test_soft_values_are_written_as_json_dumps_writes_floats():
    rng = random.Random(0)
    values = [k / 16 for k in range(17)] + [k / 3 for k in range(4)] + [k / 7 for k in range(8)]
    values += [1e-7, 1e-5, 1e-4, 0.1 + 0.2, 0.1, -0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 0.9999999999999999]
    values += [1e15, 1e16, 1e22, 123456789.0, 12345678901234567890.0, math.inf, -math.inf]
    values += [rng.random() for _ in range(300)] + [rng.random() ** 12 for _ in range(100)]
    values += [float(rng.randint(0, 10**6)) for _ in range(50)] + [0.0, -0.0, 1.0]  # repeats, -0.0 next to 0.0
    rows = [values[i : i + 7] for i in range(0, len(values), 7)] + [[math.nan, 0.5]]
    batch = pa.table(
        {
            "image": [["a.png"]] * len(rows),
            "image_is_list": [False] * len(rows),
            "question": ["Q"] * len(rows),
            "question_orig": [""] * len(rows),
            "steps": [[f"s{j}" for j in range(len(row))] for row in rows],
            "labels": [[float(j % 2 == 0) for j in range(len(row))] for row in rows],
            "mc_scores": rows,
        }
    )
    lines = internvl_lines(batch, label_mode="soft").to_pylist()
    # Arrow's own float-to-string cast would not do: it writes 1, 1e-7, -0
    assert pa.compute.cast(pa.array([1.0, 1e-7, -0.0]), pa.string()).to_pylist() != ["1.0", "1e-07", "-0.0"]
    for line, row in zip(lines, rows, strict=True):
        human = "Question: Q\nProcess: " + "\n\n".join(f"s{j}<prm>" for j in range(len(row)))
        record = {
            "image": "a.png",
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": row}],
        }
        assert line == json.dumps(record, ensure_ascii=False)
        assert gpt_bytes(line.encode()) == json.dumps(row).encode()
        parsed = json.loads(line)["conversations"][1]["value"]
        assert [repr(value) for value in parsed] == [repr(value) for value in row]  # -0.0, nan included
    # hard labels of the same batch: unchanged, 1.0 / 0.0 from the labels column
    hard = internvl_lines(batch).to_pylist()
    for line, labels in zip(hard, batch.column("labels").to_pylist(), strict=True):
        assert gpt_bytes(line.encode()) == json.dumps(labels).encode() and b"0.0" in gpt_bytes(line.encode())


def test_soft_labels_need_the_internvl_format(corpus, tmp_path, capsys):
    assert (
        select("--annotations-dir", corpus["annotations"], "--label-mode", "soft", "--output", tmp_path / "o.jsonl")
        == 2
    )
    error = capsys.readouterr().err
    assert "label mode soft is for the internvl format" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()
    scored = datasets.Dataset.from_dict({"image": [["a.png"]]})
    with pytest.raises(ValueError, match="label mode soft is for the internvl format"):
        formats.write_subset(scored, tmp_path / "o.parquet", label_mode="soft")
    with pytest.raises(ValueError, match="unknown label mode 'medium'"):
        formats.write_subset(scored, tmp_path / "o.jsonl", format="internvl", label_mode="medium")
    with pytest.raises(SystemExit):
        select("--annotations-dir", corpus["annotations"], "--label-mode", "medium", "--output", tmp_path / "o.jsonl")


def test_the_internvl_format_is_still_importable_from_formats():
    from bis_prm.data import internvl

    assert formats.internvl_lines is internvl.internvl_lines
    assert formats.write_internvl_jsonl is internvl.write_internvl_jsonl


# ---- reading back ----


def test_parse_prompt_inverts_the_prompt():
    questions = ["<image>\nWhat is shown? ", " Which “angle” is 90°?\n\n", "Process: not a newline before it", "中文"]
    steps = [[" Step 1: look. ", "Step 2: a\n\nb\n"], ["only step"], ["a\tb", " \n c"], ["x", "y", "z"]]
    prompts = prompt_column(pa.array(questions), pa.array(steps)).to_pylist()
    for prompt, question, rollout in zip(prompts, questions, steps, strict=True):
        assert parse_prompt(prompt) == (question.strip(), [step.strip() for step in rollout])
    assert parse_prompt(prompts[0])[0] == "<image>\nWhat is shown?"  # the collator removes the placeholder


def test_round_trip_gives_the_hf_subset(corpus):
    hf = datasets.load_dataset("json", data_files=str(corpus["hf"]), split="train")
    for name, targets in [("hard", hf["labels"]), ("soft", hf["mc_scores"])]:
        rows, skipped = read_internvl_rows(corpus[name])
        assert skipped.total() == 0 and [row["line"] for row in rows] == list(range(1, 31))
        ds = read_internvl_jsonl(corpus[name], image_root=corpus["root"])
        assert ds.column_names == ["image", "image_root", "question", "steps", "labels", "line"]
        assert ds["image"] == hf["image"]
        assert ds["question"] == hf["question"] and ds["steps"] == hf["steps"]
        assert sum(question.startswith("<image>\n") for question in ds["question"]) >= 3
        assert ds["labels"] == targets
        # the HF subset records the corpus root relative to itself
        assert set(ds["image_root"]) == {str(corpus["root"].resolve())}
        assert {str((corpus["hf"].parent / root).resolve()) for root in hf["image_root"]} == set(ds["image_root"])
    # string and list images of the raw file both come back as lists of paths
    raw_images = [json.loads(line)["image"] for line in corpus["hard"].read_text(encoding="utf-8").splitlines()]
    assert {type(image) for image in raw_images} == {str, list}
    assert hf["image"] == [image if isinstance(image, list) else [image] for image in raw_images]
    # without image_root, the paths are relative to the file's folder
    assert set(read_internvl_jsonl(corpus["hard"])["image_root"]) == {str(corpus["hard"].parent.resolve())}
    # training's loader recognises the file (load_dataset("json") would reject its mixed types)
    assert is_internvl_jsonl(corpus["hard"]) and not is_internvl_jsonl(corpus["hf"])
    train, _, report = load_prm_datasets(ScriptArguments(str(corpus["hard"])))
    assert train.to_dict() == read_internvl_jsonl(corpus["hard"]).to_dict()
    assert report["params"]["ratio"] == 0.25  # the selection report is written next to an InternVL file too


# ---- hostile lines ----


def _record(image="img/a.png", human="Question: Q?\nProcess: a<prm>\n\nb<prm>", gpt=(1.0, 0.0), **changes) -> dict:
    record = {
        "image": image,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": list(gpt)}],
    }
    record.update(changes)
    return record


def _line(record, ensure_ascii: bool = False) -> bytes:
    return json.dumps(record, ensure_ascii=ensure_ascii).encode()


def _with_turns(human=None, gpt=None) -> bytes:
    record = _record()
    if human is not None:
        record["conversations"][0] = human
    if gpt is not None:
        record["conversations"][1] = gpt
    return _line(record)


# (raw line, expected skip reason; "" for a usable rollout, None for a blank line)
HOSTILE_LINES = [
    (_line(_record()), ""),
    (b"", None),
    (b"   \t", None),
    (b'{"image": "img/a.png", "conversations": [{"from": "hu', "broken_json"),
    (_line(_record(image="img/é.png", gpt=(0.0, 0.0))), ""),
    (_line(_record()).replace(b"img/a.png", b"img/\xff\xfe.png"), "undecodable_line"),
    (b"[1, 2, 3]", "wrong_type"),
    (b'"just a string"', "wrong_type"),
    (_line({"image": "img/a.png"}), "wrong_type"),
    (_line(_record(conversations=[{"from": "human", "value": "Question: Q\nProcess: a<prm>"}])), "wrong_type"),
    (_line(_record(conversations="Question: Q\nProcess: a<prm>")), "wrong_type"),
    (_with_turns(human={"from": "gpt", "value": "Question: Q\nProcess: a<prm>\n\nb<prm>"}), "wrong_type"),
    (_with_turns(human={"from": "human", "value": ["Question: Q\nProcess: a<prm>\n\nb<prm>"]}), "wrong_type"),
    (_with_turns(gpt={"from": "gpt", "value": "[1.0, 0.0]"}), "wrong_type"),
    (_with_turns(gpt=["gpt", [1.0, 0.0]]), "wrong_type"),
    (_line(_record(human="Question: \ud83d\nProcess: a<prm>\n\nb<prm>"), ensure_ascii=True), "invalid_text"),
    (_line(_record(image="img/\ud83d.png"), ensure_ascii=True), "invalid_text"),
    (_line({k: v for k, v in _record().items() if k != "image"}), "missing_image"),
    (_line(_record(image=None)), "missing_image"),
    (_line(_record(image="")), "missing_image"),
    (_line(_record(image=["img/a.png", 3])), "missing_image"),
    (_line(_record(image=["img/a.png", ""])), "missing_image"),
    (_line(_record(image=7)), "missing_image"),
    (_line(_record(human="Q?\nProcess: a<prm>\n\nb<prm>")), "bad_prompt"),
    (_line(_record(human="Question: Q? Process: a<prm>\n\nb<prm>")), "bad_prompt"),
    (_line(_record(human="Question: Q?\nProcess: a<prm>\n\nb<prm>\n\nc")), "bad_prompt"),
    (_line(_record(human="Question: Q?\nProcess: a\n\nb", gpt=())), "no_steps"),
    (_line(_record(human="Question: Q?\nProcess: a<prm>\n\n <prm>")), "blank_step"),
    (_line(_record(gpt=(1.0, 1.5))), "bad_label"),
    (_line(_record(gpt=(-0.1, 0.0))), "bad_label"),
    (_line(_record(gpt=("1.0", 0.0))), "bad_label"),
    (_line(_record(gpt=(True, 0.0))), "bad_label"),
    (_line(_record(gpt=(None, 0.0))), "bad_label"),
    (_line(_record(gpt=([1.0], 0.0))), "bad_label"),
    (_line(_record(gpt=(1.0, 0.0))).replace(b"[1.0, 0.0]", b"[NaN, 0.0]"), "bad_label"),
    (_line(_record(gpt=(1.0, 0.0))).replace(b"[1.0, 0.0]", b"[1e400, 0.0]"), "bad_label"),
    (_line(_record(gpt=(10**400, 0.0))), "bad_label"),
    (_line(_record(gpt=(1.0, 0.0, 1.0))), "length_mismatch"),
    (_line(_record(gpt=(1.0,))), "length_mismatch"),
    (_line(_record(gpt=())), "length_mismatch"),
    (_line(_record(image=["img/a.png", "img/b.png"], gpt=(1, 0))), ""),
    (_line(_record(human="Question: <image>\nQ “2”?\nProcess: é 中文<prm>\n\nb<prm>", gpt=(0.9375, 1 / 3))), ""),
    # a text-only rollout, as the writer writes one: no image, unlike an absent or null `image`
    (_line(_record(image=[])), ""),
]


def _expected_skips() -> dict[str, list[int]]:
    expected = {}
    for index, (_, reason) in enumerate(HOSTILE_LINES):
        if reason:
            expected.setdefault(reason, []).append(index + 1)
    return expected


@pytest.mark.parametrize("variant", ["clean", "bom", "crlf", "bom_crlf"])
def test_hostile_lines_are_skipped_with_their_reason_and_line(tmp_path, variant, caplog):
    newline = b"\r\n" if "crlf" in variant else b"\n"
    data = (b"\xef\xbb\xbf" if "bom" in variant else b"") + newline.join(line for line, _ in HOSTILE_LINES) + newline
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(data)
    rows, skipped = read_internvl_rows(path)
    assert {reason: entry["lines"] for reason, entry in skipped.summary().items()} == _expected_skips()
    assert set(skipped.counts()) == set(SKIP_REASONS)  # every reason is exercised
    assert [row["line"] for row in rows] == [i + 1 for i, (_, reason) in enumerate(HOSTILE_LINES) if reason == ""]
    assert rows[0] == {"line": 1, "image": ["img/a.png"], "question": "Q?", "steps": ["a", "b"], "labels": [1.0, 0.0]}
    assert rows[1]["image"] == ["img/é.png"] and rows[1]["labels"] == [0.0, 0.0]
    assert rows[2]["image"] == ["img/a.png", "img/b.png"] and rows[2]["labels"] == [1.0, 0.0]
    assert rows[3]["question"] == "<image>\nQ “2”?" and rows[3]["steps"] == ["é 中文", "b"]
    assert rows[3]["labels"] == [0.9375, 1 / 3]
    assert rows[4] == {
        "line": len(HOSTILE_LINES),
        "image": [],
        "question": "Q?",
        "steps": ["a", "b"],
        "labels": [1.0, 0.0],
    }
    with caplog.at_level(logging.WARNING, logger="bis_prm.data.internvl"):
        ds = read_internvl_jsonl(path)
    assert len(ds) == 5 and ds["line"] == [row["line"] for row in rows] and ds["image"][4] == []
    assert f"Skipped {skipped.total()} of {skipped.total() + 5} lines of {path}" in caplog.text
    mismatched = ", ".join(map(str, _expected_skips()["length_mismatch"]))
    assert f"length_mismatch: 3 (lines {mismatched}; e.g. 3 targets for 2 steps)" in caplog.text
    # the BOM and CRLF versions read exactly like the clean one
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\n".join(line for line, _ in HOSTILE_LINES) + b"\n")
    assert read_internvl_rows(clean)[0] == rows and read_internvl_rows(clean)[1] == skipped
    assert is_internvl_jsonl(path)


def test_a_file_without_a_usable_line_raises_naming_it(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(line for line, reason in HOSTILE_LINES if reason not in ("", None)))
    with pytest.raises(ValueError, match=r"No usable rollout in the InternVL conversation file .*bad\.jsonl: all "):
        read_internvl_jsonl(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\xef\xbb\xbf\r\n\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: it is empty"):
        read_internvl_jsonl(empty)


# ---- training from an InternVL file equals training from the HF format ----


@pytest.fixture(scope="module")
def raw_subsets(tmp_path_factory):
    """Every rollout of a corpus with images, as an HF subset and InternVL files (hard, soft) in another folder."""
    root = tmp_path_factory.mktemp("internvl_training")
    corpus = write_raw_corpus(root / "corpus")
    without_question_orig(corpus / "annotations" / "colors.jsonl")
    out = root / "subsets"
    paths = {name: out / f"{name}.jsonl" for name in ("hf", "hard", "soft")}
    common = ["--annotations-dir", corpus, "--method", "full"]
    assert select(*common, "--output", paths["hf"]) == 0
    assert select(*common, "--format", "internvl", "--output", paths["hard"]) == 0
    assert select(*common, "--format", "internvl", "--label-mode", "soft", "--output", paths["soft"]) == 0
    model, processor = load_prm(tiny_base("qwen2_5_vl", tmp_path_factory))
    return {"corpus": corpus, "model": model.float().eval(), "processor": processor, **paths}


def _first_batch_loss(subsets, dataset_path, output_dir, **config):
    train, _, _ = load_prm_datasets(ScriptArguments(str(dataset_path)))
    args = tiny_config(output_dir, per_device_train_batch_size=4, train_sampling_strategy="sequential", **config)
    trainer = PRMTrainer(subsets["model"], args=args, train_dataset=train, processing_class=subsets["processor"])
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("skipped")
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    return batch, loss


@pytest.mark.parametrize("label_mode", ["hard", "soft"])
def test_the_first_training_batch_gives_the_same_loss(raw_subsets, tmp_path, label_mode):
    hf_batch, hf_loss = _first_batch_loss(raw_subsets, raw_subsets["hf"], tmp_path / "hf", label_mode=label_mode)
    # the InternVL file holds the targets themselves: hard labels or MC scores, trained as `labels`
    internvl = raw_subsets[label_mode]
    batch, loss = _first_batch_loss(raw_subsets, internvl, tmp_path / "ivl", image_root=str(raw_subsets["corpus"]))
    assert hf_batch.keys() == batch.keys() and "pixel_values" in batch
    questions = read_internvl_jsonl(internvl)["question"][:4]
    assert sum(question.startswith("<image>\n") for question in questions) == 2  # the collator removes them
    for key, value in hf_batch.items():
        assert torch.equal(value, batch[key]), key
    steps = batch["labels"][batch["labels"] != -100]
    assert ((steps > 0) & (steps < 1)).any() == (label_mode == "soft")
    torch.testing.assert_close(loss, hf_loss, rtol=0, atol=1e-6)


def test_a_recipe_names_the_file_and_the_corpus_root(raw_subsets, tmp_path):
    """`dataset_name: hard.jsonl` + `image_root: <corpus>` in a recipe: the images resolve against the corpus root,
    not the file's folder (where they are not)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {REPO_ROOT}\ndataset_name: {raw_subsets['hard']}\nimage_root: {raw_subsets['corpus']}\n"
        f"output_dir: {tmp_path / 'out'}\nreport_to: none\n"
    )
    script_args, training_args, _ = parse_recipe(["--config", str(recipe)])
    assert training_args.image_root == str(raw_subsets["corpus"])
    train, _, _ = load_prm_datasets(script_args)
    assert len(train) == 12
    args = tiny_config(tmp_path / "a")
    with pytest.raises(PRMDatasetError, match="No row of the train dataset can be trained on"):
        PRMTrainer(raw_subsets["model"], args=args, train_dataset=train, processing_class=raw_subsets["processor"])
    args = tiny_config(tmp_path / "b", image_root=training_args.image_root)
    trainer = PRMTrainer(
        raw_subsets["model"], args=args, train_dataset=train, processing_class=raw_subsets["processor"]
    )
    assert trainer.dataset_checks["train"].num_dropped() == 0
