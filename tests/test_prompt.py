"""The BIS reference prompt (`prompt_format="bis_reference"`) against the reference code's sequence, built by hand."""

import json

import pyarrow as pa
import pytest
import torch
from transformers import AutoProcessor

from bis_prm.data.prompt import prompt_column, render_prompt
from bis_prm.model.inference import StepScorer, rollout_token_counts, score_steps
from bis_prm.model.modeling_prm import add_step_token, load_prm
from bis_prm.model.processing_prm import PRMCollator
from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.script import main, parse_recipe
from tests.utils import REPO_ROOT, image, prm_dataset, tiny_base, write_images

# The reference's definition (Balanced-Info-MPRM, src/internvl/train/dataset.py `preprocess_internvl2_5` with
# InternVL's `internvl2_5` conversation template), written out here rather than taken from bis_prm.
SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


def reference_ids(tokenizer, value: str) -> list[int]:
    """The reference's input ids: three turns tokenized one by one and concatenated (the tiny tokenizer adds no BOS,
    like InternVL2.5's Qwen2 tokenizers)."""
    turns = [
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n",
        "<|im_start|>user\n<|im_end|>\n",
        f"<|im_start|>assistant\n{value}<|im_end|>\n",
    ]
    return [token for turn in turns for token in tokenizer(turn).input_ids]


def image_tokens(tiles: int) -> str:
    # the tiny InternVL: 28 px tiles of 4x4 patches, pixel-shuffled by 0.5 -> 4 tokens per tile
    return "<img>" + "<IMG_CONTEXT>" * (4 * tiles) + "</img>"


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    processor = AutoProcessor.from_pretrained(tiny_base("internvl", tmp_path_factory))
    add_step_token(processor.tokenizer, "<prm>")
    return processor


def examples() -> list[dict]:
    return [
        # a 2:1 image with at most 2 tiles: a 2x1 grid plus the thumbnail, 3 tiles; `<image>\n` goes first
        {
            "image": image("red", (56, 28)),
            "question": " How many red circles are there? ",
            "steps": [" There are 2 red circles. ", "So the answer is 2."],
            "labels": [1.0, 0.0],
        },
        # the question's own placeholder is where the image goes; a square image is one tile
        {
            "image": image("blue", (28, 28)),
            "question": "Look at <image>\nWhich shape is blue?",
            "steps": ["The square."],
            "labels": [1.0],
        },
        # no image: the reference's text-only sequence
        {"image": None, "question": "What is 3 + 4?", "steps": ["3 + 4 = 7.", "So 7."], "labels": [1.0, 1.0]},
    ]


def expected_values() -> list[str]:
    return [
        f"{image_tokens(3)}\nQuestion: How many red circles are there?\nProcess: There are 2 red circles.<prm>\n\n"
        "So the answer is 2.<prm>",
        f"Question: Look at {image_tokens(1)}\nWhich shape is blue?\nProcess: The square.<prm>",
        "Question: What is 3 + 4?\nProcess: 3 + 4 = 7.<prm>\n\nSo 7.<prm>",
    ]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_token_ids_and_labels_equal_the_hand_built_reference_sequence(processor, padding_side):
    tokenizer = processor.tokenizer
    batch = PRMCollator(processor, prompt_format="bis_reference", padding_side=padding_side)(examples())
    step_id = tokenizer.convert_tokens_to_ids("<prm>")
    for row, (example, value) in enumerate(zip(examples(), expected_values(), strict=True)):
        real = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row][real]
        assert ids.tolist() == reference_ids(tokenizer, value)
        labels = batch["labels"][row][real]
        # the reference's targets: the step labels at the <prm> tokens, ignored everywhere else
        assert labels[ids == step_id].tolist() == example["labels"]
        assert (labels[ids != step_id] == -100).all()
    assert batch["pixel_values"].shape[0] == 3 + 1  # the tiles of both images, in order
    lengths = rollout_token_counts(processor, examples(), prompt_format="bis_reference")
    assert lengths == batch["attention_mask"].sum(dim=1).tolist()


def test_the_default_format_is_the_chat_template_user_turn(processor):
    batch = PRMCollator(processor)(examples()[2:])
    expected = "<|im_start|>user\nQuestion: What is 3 + 4?\nProcess: 3 + 4 = 7.<prm>\n\nSo 7.<prm><|im_end|>\n"
    assert batch["input_ids"][0].tolist() == processor.tokenizer(expected).input_ids


def test_a_tokenizer_that_adds_a_bos_gets_exactly_one(tmp_path_factory):
    """InternVL2.5-8B's InternLM2 tokenizer adds a BOS; the reference keeps one at the very start."""
    processor = AutoProcessor.from_pretrained(tiny_base("internvl", tmp_path_factory))
    add_step_token(processor.tokenizer, "<prm>")
    tokenizer = processor.tokenizer
    tokenizer.bos_token = "<|endoftext|>"
    tokenizer.add_bos_token = True
    batch = PRMCollator(processor, prompt_format="bis_reference")(examples()[2:])
    tokenizer.add_bos_token = False
    without_bos = reference_ids(tokenizer, expected_values()[2])
    assert batch["input_ids"][0].tolist() == [tokenizer.bos_token_id, *without_bos]


def test_several_images_without_placeholders_each_get_one_in_front(processor):
    rollout = {"image": [image("red", (28, 28)), image("blue", (28, 28))], "question": "Same?", "steps": ["Yes."]}
    batch = PRMCollator(processor, prompt_format="bis_reference")([rollout])
    value = f"{image_tokens(1)}\n{image_tokens(1)}\nQuestion: Same?\nProcess: Yes.<prm>"
    assert batch["input_ids"][0].tolist() == reference_ids(processor.tokenizer, value)


def test_the_reference_prompt_is_the_internvl_export_text():
    """One definition: the text in the assistant turn is the human value the InternVL export writes."""
    question, steps = " <image>\nHow many? ", ["a ", " b"]
    exported = prompt_column(pa.array([question]), pa.array([steps]))[0].as_py()
    assert render_prompt(question, steps, prompt_format="bis_reference") == exported
    assert render_prompt(question, steps) == "Question: How many?\nProcess: a<prm>\n\nb<prm>"


def test_other_processors_and_unknown_formats_are_refused(processor, tmp_path_factory, tmp_path):
    qwen = AutoProcessor.from_pretrained(tiny_base("qwen2_5_vl", tmp_path_factory))
    add_step_token(qwen.tokenizer, "<prm>")
    with pytest.raises(ValueError, match="needs an InternVLProcessor, not Qwen2_5_VLProcessor"):
        PRMCollator(qwen, prompt_format="bis_reference")
    with pytest.raises(ValueError, match="`prompt_format` must be one of bis_prm, bis_reference; got 'internvl'"):
        PRMCollator(processor, prompt_format="internvl")
    with pytest.raises(ValueError, match="`prompt_format` must be one of"):
        PRMConfig(output_dir=str(tmp_path), prompt_format="reference")


def test_scoring_reads_the_format_from_the_config(processor, tmp_path_factory):
    """A PRM whose config names `bis_reference` is scored on the reference sequence: the scores are those of a
    forward pass on the hand-built ids."""
    model, prm_processor = load_prm(tiny_base("internvl", tmp_path_factory), head="linear")
    model.config.prompt_format = "bis_reference"
    assert StepScorer(model, prm_processor).collator.prompt_format == "bis_reference"
    rollout = examples()[0]
    scores = score_steps(model, prm_processor, [rollout])[0]

    ids = torch.tensor([reference_ids(prm_processor.tokenizer, expected_values()[0])])
    pixels = prm_processor.image_processor(images=[rollout["image"]], crop_to_patches=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels["pixel_values"]).logits[0]
    step_id = prm_processor.tokenizer.convert_tokens_to_ids("<prm>")
    expected = logits[ids[0] == step_id].softmax(dim=-1)[:, 1]
    torch.testing.assert_close(torch.tensor(scores), expected, rtol=1e-5, atol=1e-6)

    del model.config.prompt_format  # a PRM saved before the option existed reads the default format
    assert StepScorer(model, prm_processor).collator.prompt_format == "bis_prm"
    assert score_steps(model, prm_processor, [rollout])[0] != pytest.approx(scores, abs=1e-6)


def test_the_tiny_reference_recipe_trains_and_the_prm_keeps_its_format(tmp_path_factory, tmp_path):
    base = tiny_base("internvl", tmp_path_factory)
    prm_dataset(write_images(tmp_path / "images"), num_rows=8).to_parquet(tmp_path / "subset.parquet")
    args = parse_recipe(
        [
            "--config",
            str(REPO_ROOT / "recipes" / "tiny" / "config_reference.yaml"),
            "--model_name_or_path",
            str(base),
            "--dataset_name",
            str(tmp_path / "subset.parquet"),
            "--selection",
            "null",
            "--eval_ratio",
            "0.0",
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "2",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert args[1].prompt_format == "bis_reference"
    main(*args)
    out = tmp_path / "out"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert len([entry["loss"] for entry in history if "loss" in entry]) == 3
    assert json.loads((out / "config.json").read_text())["prompt_format"] == "bis_reference"
    assert "| prompt_format | bis_reference |" in (out / "README.md").read_text()

    trained, processor = load_prm(out)
    initial, _ = load_prm(base, head="yes_no")
    assert not torch.equal(trained.score.weight, initial.score.weight)
    assert StepScorer(trained, processor).collator.prompt_format == "bis_reference"
