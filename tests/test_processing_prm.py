import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from bis_prm.model.modeling_prm import add_step_token
from bis_prm.model.processing_prm import PRMCollator, load_image, render_prompt, tile_images
from tests.utils import image, rollouts, tiny_base


@pytest.fixture(scope="module", params=["qwen2_5_vl", "internvl"])
def processor(request, tmp_path_factory):
    processor = AutoProcessor.from_pretrained(tiny_base(request.param, tmp_path_factory))
    add_step_token(processor.tokenizer, "<prm>")
    return processor


@pytest.fixture(scope="module")
def qwen_processor(tmp_path_factory):
    processor = AutoProcessor.from_pretrained(tiny_base("qwen2_5_vl", tmp_path_factory))
    add_step_token(processor.tokenizer, "<prm>")
    return processor


def test_render_prompt_format():
    prompt = render_prompt("<image>\n How many?  ", [" Two red. ", "So 2.\n"])
    assert prompt == "Question: How many?\nProcess: Two red.<prm>\n\nSo 2.<prm>"
    assert render_prompt("<image1><image2>Q", ["a"], step_token="<s>") == "Question: Q\nProcess: a<s>"


@pytest.mark.parametrize(
    "question, steps, match",
    [
        ("Q", [], "no step"),
        ("Q <prm>", ["a"], "question already contains the step token '<prm>'"),
        ("Q", ["a", "b<prm>"], "step 1 already contains the step token '<prm>'"),
    ],
)
def test_render_prompt_bad_input(question, steps, match):
    with pytest.raises(ValueError, match=match):
        render_prompt(question, steps)


def test_tile_images_grid():
    images = [image("red", (10, 20)), image("blue", (30, 10)), image("green", (10, 10)), image("black", (4, 4))]
    grid = tile_images(images, max_cols=3)
    assert grid.size == (90, 40)  # 3 columns of 30 px, 2 rows of 20 px
    assert grid.getpixel((15, 10)) == (255, 0, 0)  # red cell centred in cell (0, 0)
    assert grid.getpixel((1, 1)) == (255, 255, 255)  # white margin left of the 10 px wide red image
    assert grid.getpixel((45, 10)) == (0, 0, 255)
    assert grid.getpixel((45, 2)) == (255, 255, 255)  # blue is 10 px high, centred vertically
    assert grid.getpixel((15, 30)) == (0, 0, 0)  # fourth image starts the second row
    assert tile_images(images[:2]).size == (60, 20)


def test_load_image_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(str(broken))
    assert load_image(Image.new("L", (3, 3))).mode == "RGB"


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_collator_labels_at_step_tokens(processor, padding_side):
    examples = rollouts()
    collator = PRMCollator(processor, padding_side=padding_side)
    batch = collator(examples)
    step_id = processor.tokenizer.convert_tokens_to_ids("<prm>")
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["num_steps"].tolist() == [2, 4, 1, 3]
    for row, example in enumerate(examples):
        is_step = batch["input_ids"][row] == step_id
        assert batch["labels"][row][is_step].tolist() == example["labels"]
        assert (batch["labels"][row][~is_step] == -100).all()
    pad_column = 0 if padding_side == "left" else -1
    assert batch["attention_mask"][2, pad_column] == 0  # the shortest (text-only) rollout is padded on that side


def test_collator_passes_all_images_or_tiles(qwen_processor):
    examples = rollouts()[:2]
    all_images = PRMCollator(qwen_processor)(examples)
    tiled = PRMCollator(qwen_processor, max_images=1)(examples)
    assert len(all_images["image_grid_thw"]) == 3
    assert len(tiled["image_grid_thw"]) == 2


def test_collator_without_labels_is_inference(qwen_processor):
    examples = [{k: v for k, v in ex.items() if k != "labels"} for ex in rollouts()]
    batch = PRMCollator(qwen_processor)(examples)
    assert "labels" not in batch
    assert batch["num_steps"].tolist() == [2, 4, 1, 3]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda exs: exs[1].update(labels=[1.0, 0.0]), "Example 1: 4 steps but 2 labels"),
        (lambda exs: exs[3].update(labels=[1.0, 0.0, 1.0, 1.0]), "Example 3: 3 steps but 4 labels"),
        (lambda exs: exs[2].update(labels=[1.5]), "Example 2: labels must lie in"),
        (lambda exs: exs[0].pop("labels"), "Example 0: no 'labels' while other examples"),
        (lambda exs: exs[2].update(steps=[], labels=[]), "Example 2: The rollout has no step"),
        (lambda exs: exs[1].update(question="Q<prm>"), "Example 1: The question already contains"),
        (lambda exs: exs[3].update(image="/nonexistent/figure.png"), "Example 3: image '/nonexistent"),
    ],
)
def test_collator_bad_input(qwen_processor, mutate, match):
    examples = rollouts()
    mutate(examples)
    with pytest.raises(ValueError, match=match):
        PRMCollator(qwen_processor)(examples)


def test_collator_requires_step_token(tmp_path_factory):
    processor = AutoProcessor.from_pretrained(tiny_base("qwen2_5_vl", tmp_path_factory))
    with pytest.raises(ValueError, match="does not know the step token '<prm>'"):
        PRMCollator(processor)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_truncation_keeps_labels_aligned(processor, padding_side):
    examples = rollouts()
    full = PRMCollator(processor, padding_side=padding_side)(examples)
    step_id = processor.tokenizer.convert_tokens_to_ids("<prm>")
    # Cut rollout 1 right after its second step token: steps 3 and 4 are dropped with their labels.
    real = full["input_ids"][1][full["attention_mask"][1].bool()]
    second_step = int((real == step_id).nonzero()[1])
    max_length = second_step + 1
    batch = PRMCollator(processor, padding_side=padding_side, max_length=max_length)(examples)
    assert batch["input_ids"].shape[1] == max_length
    lengths = full["attention_mask"].sum(1).clamp(max=max_length)
    assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
    assert batch["num_steps"][1] == 2
    assert batch["labels"][1][batch["input_ids"][1] == step_id].tolist() == [1.0, 0.0]
    for row in range(len(examples)):
        kept = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        assert kept.tolist() == real_tokens(full, row)[: len(kept)]
        is_step = batch["input_ids"][row] == step_id
        assert batch["labels"][row][is_step].tolist() == examples[row]["labels"][: int(batch["num_steps"][row])]


def real_tokens(batch, row):
    return batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()


def test_truncation_refuses_to_cut_images_or_every_step(qwen_processor):
    examples = rollouts()[:1]
    full = PRMCollator(qwen_processor)(examples)
    step_id = qwen_processor.tokenizer.convert_tokens_to_ids("<prm>")
    first_step = int((full["input_ids"][0] == step_id).nonzero()[0])
    with pytest.raises(ValueError, match=f"Example 0: max_length={first_step}"):
        PRMCollator(qwen_processor, max_length=first_step)(examples)
    image_start = int((full["input_ids"][0] == qwen_processor.image_token_id).nonzero()[0])
    with pytest.raises(ValueError, match="cannot hold the image"):
        PRMCollator(qwen_processor, max_length=image_start + 1)(examples)


def test_collator_rejects_step_tokens_it_did_not_place(tmp_path_factory):
    processor = AutoProcessor.from_pretrained(tiny_base("qwen2_5_vl", tmp_path_factory))
    add_step_token(processor.tokenizer, "<prm>")
    processor.chat_template = "<prm>" + processor.chat_template  # a template that writes a step token itself
    with pytest.raises(ValueError, match="Example 0: found 3 step tokens '<prm>' for 2 steps"):
        PRMCollator(processor)(rollouts()[:1])


def test_collator_rejects_step_tokens_merged_with_the_text(qwen_processor):
    # "s" is a plain token of the tiny vocabulary: after the step "Ye" the tokenizer writes "Yes", one token.
    with pytest.raises(ValueError, match="Example 1: found 1 step tokens 's' for 2 steps.*merged"):
        PRMCollator(qwen_processor, step_token="s")(
            [{"question": "What?", "steps": ["No"]}, {"question": "What?", "steps": ["Ye", "No"]}]
        )


def test_collator_reads_image_paths_like_pil_images(qwen_processor, tmp_path):
    examples = rollouts()[:2]
    image("red").save(tmp_path / "red.png")
    image("blue", (56, 28)).save(tmp_path / "blue.png")
    image("green", (28, 56)).save(tmp_path / "green.png")
    with_paths = [
        {**examples[0], "image": str(tmp_path / "red.png")},
        {**examples[1], "image": [tmp_path / "blue.png", str(tmp_path / "green.png")]},
    ]
    from_pil, from_paths = PRMCollator(qwen_processor)(examples), PRMCollator(qwen_processor)(with_paths)
    assert from_pil.keys() == from_paths.keys()
    for key in from_pil:
        assert torch.equal(from_pil[key], from_paths[key]), key
