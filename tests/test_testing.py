import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from bis_prm.cli import main
from bis_prm.testing import make_tiny_vlm, tiny_tokenizer
from tests.utils import image, tiny_base

ARCHES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}


@pytest.mark.parametrize("arch", list(ARCHES))
def test_tiny_vlm_loads_and_runs(arch, tmp_path_factory):
    path = tiny_base(arch, tmp_path_factory)
    assert (path / "model.safetensors").exists()
    assert json.loads((path / "config.json").read_text())["architectures"] == [ARCHES[arch]]
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == ARCHES[arch]
    assert sum(p.numel() for p in model.parameters()) < 400_000
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Question: Yes or No?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(text=[text], images=[image("red", (56, 56))], return_tensors="pt")
    num_image_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    assert 1 <= num_image_tokens <= 8  # an image costs only a few tokens
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(processor.tokenizer))


def test_tiny_tokenizer_words_are_single_tokens():
    tokenizer = tiny_tokenizer("qwen2_5_vl")
    for word in ("Yes", "No", "Question", "Process"):
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert tokenizer.image_token == "<|image_pad|>"
    assert tokenizer.decode(tokenizer("Question: 3 + 4 = 7?").input_ids) == "Question: 3 + 4 = 7?"
    with pytest.raises(ValueError, match="Unknown tiny architecture 'gpt2'"):
        tiny_tokenizer("gpt2")


def test_same_seed_same_weights(tmp_path):
    first = load_file(make_tiny_vlm("llava", tmp_path / "a", seed=1) / "model.safetensors")
    second = load_file(make_tiny_vlm("llava", tmp_path / "b", seed=1) / "model.safetensors")
    third = load_file(make_tiny_vlm("llava", tmp_path / "c", seed=2) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], third[key]) for key in first)


def test_cli_make_tiny_vlm(tmp_path, capsys):
    assert main(["make-tiny-vlm", "--arch", "internvl", "--output", str(tmp_path / "tiny")]) == 0
    assert "tiny internvl checkpoint" in capsys.readouterr().out
    assert AutoProcessor.from_pretrained(tmp_path / "tiny").image_seq_length == 4
