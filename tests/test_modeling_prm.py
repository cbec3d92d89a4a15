import os

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoModelForTokenClassification,
    AutoProcessor,
    PreTrainedTokenizerFast,
)
from transformers.modeling_layers import GenericForTokenClassification
from transformers.modeling_outputs import TokenClassifierOutput

from bis_prm.model.inference import score_steps
from bis_prm.model.modeling_prm import (
    InternVLForTokenClassification,
    LlavaForTokenClassification,
    Qwen2_5_VLForTokenClassification,
    Qwen2VLForTokenClassification,
    load_prm,
    prm_class_for,
    prm_lora_config,
    prm_loss,
    yes_no_token_ids,
)
from bis_prm.model.processing_prm import PRMCollator
from tests.utils import rollouts, soft, step_logits, tiny_base

CLASSES = {
    "qwen2_5_vl": Qwen2_5_VLForTokenClassification,
    "internvl": InternVLForTokenClassification,
    "llava": LlavaForTokenClassification,
    "qwen2_vl": Qwen2VLForTokenClassification,
}


def model_inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key not in ("labels", "num_steps")}


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "internvl", "llava", "qwen2_vl"])
def test_load_prm_creates_prm_with_config(arch, tmp_path_factory):
    model, processor = load_prm(tiny_base(arch, tmp_path_factory), head="linear")
    assert type(model) is CLASSES[arch] and isinstance(model, GenericForTokenClassification)
    config = model.config
    assert (config.prm_head, config.step_token, config.num_labels) == ("linear", "<prm>", 2)
    assert config.step_token_id == processor.tokenizer.convert_tokens_to_ids("<prm>")
    assert (
        config.prm_base_architecture == AutoConfig.from_pretrained(tiny_base(arch, tmp_path_factory)).architectures[0]
    )
    assert config.architectures == [CLASSES[arch].__name__] and config.classifier_dropout == 0.0
    assert model.get_input_embeddings().num_embeddings > config.step_token_id
    assert model.score.weight.shape == (2, config.get_text_config().hidden_size)
    assert not model.training
    # What the Trainer reads: count every labelled position (no causal shift)
    assert model.loss_type == "ForTokenClassification"
    assert not any("lm_head" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_5_vl-tied", "internvl", "llava", "qwen2_vl"])
def test_yes_no_head_equals_restricted_lm_logits(arch, tmp_path_factory):
    base_path = tiny_base(arch, tmp_path_factory)
    model, processor = load_prm(base_path, head="yes_no")
    base = AutoModelForImageTextToText.from_pretrained(base_path).eval()
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    assert tied == arch.endswith("-tied")
    base.resize_token_embeddings(model.get_input_embeddings().num_embeddings)
    base.get_input_embeddings().weight.data.copy_(model.get_input_embeddings().weight)
    batch = PRMCollator(processor)(rollouts())
    step_id = model.config.step_token_id
    with torch.no_grad():
        lm_logits = base(**model_inputs(batch)).logits
    yes, no = (processor.tokenizer.convert_tokens_to_ids(token) for token in ("Yes", "No"))
    prm = step_logits(model, batch, step_id)
    for row in range(len(prm)):
        expected = lm_logits[row][batch["input_ids"][row] == step_id][:, [no, yes]]  # [negative, positive]
        torch.testing.assert_close(prm[row], expected, rtol=1e-5, atol=1e-5)


def test_the_auto_class_loads_a_saved_prm_with_stock_from_pretrained(tmp_path_factory, tmp_path):
    base_path = tiny_base("qwen2_5_vl", tmp_path_factory)
    model, processor = load_prm(base_path, head="yes_no")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert type(loaded) is Qwen2_5_VLForTokenClassification and loaded.config.prm_head == "yes_no"
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="head must be one of"):
        load_prm(base_path, head="regression")


def test_a_base_checkpoint_in_its_hub_layout_loads_the_same_weights(tmp_path_factory, tmp_path):
    """The Hub's Qwen2.5-VL checkpoints keep the v4 layout (`visual.*`, `model.layers.*`): the PRM class renames them
    as `Qwen2_5_VLForConditionalGeneration` does, so nothing is left randomly initialised."""
    from safetensors.torch import load_file, save_file

    base_path = tiny_base("qwen2_5_vl", tmp_path_factory)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in os.listdir(base_path):
        if name != "model.safetensors":
            os.symlink(base_path / name, legacy / name)
    weights = load_file(base_path / "model.safetensors")
    renamed = {
        key.replace("model.language_model.", "model.").replace("model.visual.", "visual."): value
        for key, value in weights.items()
    }
    assert any(key.startswith("visual.") for key in renamed) and not any("language_model" in key for key in renamed)
    save_file(renamed, legacy / "model.safetensors", metadata={"format": "pt"})
    torch.manual_seed(0)
    expected, _ = load_prm(base_path, head="yes_no")
    torch.manual_seed(1)  # a weight left to its random initialisation would differ
    model, _ = load_prm(legacy, head="yes_no")
    for (name, a), (_, b) in zip(expected.state_dict().items(), model.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, msg=name)


def test_yes_no_needs_single_tokens():
    # A byte-level tokenizer without merges splits every word into bytes.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(sorted(alphabet))}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    with pytest.raises(ValueError, match="'Yes' -> 3 tokens, 'No' -> 2 tokens; use head='linear'"):
        yes_no_token_ids(tokenizer)


def test_prm_class_for_names_the_way_to_add_a_backbone():
    assert prm_class_for(AutoConfig.for_model("qwen2_vl")) is Qwen2VLForTokenClassification
    with pytest.raises(ValueError, match=r"class Blip2ForTokenClassification\(GenericForTokenClassification"):
        prm_class_for(AutoConfig.for_model("blip-2"))


@pytest.fixture(scope="module")
def qwen_prm(tmp_path_factory):
    return load_prm(tiny_base("qwen2_5_vl", tmp_path_factory), head="linear")


def test_loss_uses_exactly_the_step_positions(qwen_prm):
    model, processor = qwen_prm
    examples = soft(rollouts())
    batch = PRMCollator(processor)(examples)
    output = model(**model_inputs(batch))
    assert isinstance(output, TokenClassifierOutput)
    assert output.logits.shape == (*batch["input_ids"].shape, 2)
    loss = prm_loss(output.logits, batch["labels"])

    # Hand computation over the step tokens, in step order.
    step_id = model.config.step_token_id
    terms = []
    for row, example in enumerate(examples):
        log_probs = F.log_softmax(output.logits[row][batch["input_ids"][row] == step_id], dim=-1)
        target = torch.tensor(example["labels"])
        terms.append(-(target * log_probs[:, 1] + (1 - target) * log_probs[:, 0]))  # index 1 = correct
    terms = torch.cat(terms).detach()
    torch.testing.assert_close(loss.detach(), terms.mean())
    n = len(terms)
    summed = prm_loss(output.logits, batch["labels"], num_items_in_batch=3 * n)
    torch.testing.assert_close(summed.detach(), terms.sum() / (3 * n))

    # Perturbing one label changes exactly that position's term.
    perturbed = [dict(ex, labels=list(ex["labels"])) for ex in examples]
    perturbed[1]["labels"][2] = 0.0
    new_batch = PRMCollator(processor)(perturbed)
    changed = (new_batch["labels"] != batch["labels"]).nonzero().tolist()
    step_positions = (batch["input_ids"][1] == step_id).nonzero().squeeze(1).tolist()
    assert changed == [[1, step_positions[2]]]
    log_probs = F.log_softmax(output.logits[1, step_positions[2]].detach(), dim=-1)
    term_delta = -(0.0 * log_probs[1] + 1.0 * log_probs[0]) - terms[2 + 2]  # rollout 0 has 2 steps
    with torch.no_grad():
        new_loss = prm_loss(model(**model_inputs(new_batch)).logits, new_batch["labels"])
    torch.testing.assert_close(new_loss * n - loss.detach() * n, term_delta, rtol=1e-4, atol=1e-5)

    # Labels off the step tokens must be -100: a label anywhere else is ignored only if it is -100.
    assert prm_loss(output.logits, torch.full_like(batch["labels"], -100.0)).item() == 0.0


def overfit(model, processor, examples, steps=40, lr=3e-3):
    batch = PRMCollator(processor)(examples)
    labels = batch["labels"][batch["labels"] != -100]
    floor = -(labels * labels.clamp(min=1e-12).log() + (1 - labels) * (1 - labels).clamp(min=1e-12).log()).mean()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = prm_loss(model(**model_inputs(batch)).logits, batch["labels"])
        losses.append(loss.item() - floor.item())  # excess over the targets' entropy (0 for hard labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return losses


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "internvl"])
@pytest.mark.parametrize("head", ["yes_no", "linear"])
@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_tiny_prm_overfits(arch, head, labels, tmp_path_factory):
    torch.manual_seed(0)
    model, processor = load_prm(tiny_base(arch, tmp_path_factory), head=head)
    examples = rollouts() if labels == "hard" else soft(rollouts())
    losses = overfit(model, processor, examples)
    assert losses[-1] < 0.2 * losses[0], losses


def test_save_load_round_trip(qwen_prm, tmp_path):
    model, processor = qwen_prm
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert type(loaded) is Qwen2_5_VLForTokenClassification
    assert loaded.config.prm_head == "linear"
    reloaded, reloaded_processor = load_prm(tmp_path)
    expected = score_steps(model, processor, rollouts())
    assert score_steps(loaded, processor, rollouts()) == expected
    assert score_steps(reloaded, reloaded_processor, rollouts()) == expected
    with pytest.raises(ValueError, match="is a PRM with head='linear', not 'yes_no'"):
        load_prm(tmp_path, head="yes_no")


def test_load_prm_rejects_a_processor_without_the_step_token(qwen_prm, tmp_path, tmp_path_factory):
    model, _ = qwen_prm
    model.save_pretrained(tmp_path)
    AutoProcessor.from_pretrained(tiny_base("qwen2_5_vl", tmp_path_factory)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not map the step token '<prm>' to 600"):
        load_prm(tmp_path)


def test_lora_merged_round_trip(tmp_path_factory, tmp_path):
    torch.manual_seed(0)
    model, processor = load_prm(tiny_base("internvl", tmp_path_factory), head="linear")
    peft_model = get_peft_model(model, prm_lora_config(r=4, lora_dropout=0.0))
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    assert any("score" in name for name in trainable)
    assert any("lora_A" in name and "language_model" in name for name in trainable)
    assert not any("vision" in name for name in trainable)
    overfit(peft_model, processor, rollouts(), steps=3)
    expected = score_steps(peft_model, processor, rollouts())
    merged = peft_model.merge_and_unload()
    assert type(merged) is InternVLForTokenClassification
    merged.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_prm(tmp_path)
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    actual = score_steps(loaded, loaded_processor, rollouts())
    for got, want in zip(actual, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
