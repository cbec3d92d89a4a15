"""Padding-free packing: several rollouts in one row give the loss, step logits and gradients of the same rollouts
padded in a batch, and truncation keeps exactly the first steps with their own labels, packed or not."""

import pytest
import torch

from bis_prm.model.modeling_prm import load_prm, prm_loss
from bis_prm.model.processing_prm import PRMCollator
from tests.utils import rollouts, soft, tiny_base


@pytest.fixture(scope="module", params=["qwen2_5_vl", "internvl"])
def prm(request, tmp_path_factory):
    torch.manual_seed(0)
    model, processor = load_prm(tiny_base(request.param, tmp_path_factory), head="linear")
    return model.float(), processor


def _loss_logits_grads(model, batch):
    model.zero_grad()
    inputs = {key: value for key, value in batch.items() if key not in ("labels", "num_steps")}
    logits = model(**inputs).logits
    loss = prm_loss(logits, batch["labels"])
    loss.backward()
    labelled = batch["labels"] != -100
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), logits[labelled].detach(), grads


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_a_packed_batch_equals_the_padded_one(prm, padding_side):
    model, processor = prm
    examples = soft(rollouts())
    rope = getattr(model.model, "get_rope_index", None)
    padded = PRMCollator(processor, padding_side=padding_side)(examples)
    packed = PRMCollator(processor, padding_free=True, rope_index=rope)(examples)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert packed["input_ids"].shape[1] == int(padded["attention_mask"].sum()) < padded["input_ids"].numel()
    # positions restart at every rollout
    text_positions = packed["position_ids"][0].flatten()
    assert int((text_positions == 0).sum()) == len(examples)
    loss, logits, grads = _loss_logits_grads(model, padded)
    packed_loss, packed_logits, packed_grads = _loss_logits_grads(model, packed)
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(packed_logits, logits, rtol=1e-4, atol=1e-5)  # the steps, in the same order
    assert grads.keys() == packed_grads.keys() and any(name.startswith("model.") for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_truncation_keeps_the_first_steps_with_their_own_labels(prm, padding_side, padding_free):
    model, processor = prm
    step_id = model.config.step_token_id
    steps = ["It is 2.", "Yes.", "No, 3.", "So 3."]
    examples = [
        {"image": None, "question": "What is 1 + 1?", "steps": steps, "labels": [1, 1, 0, 0]},
        {"image": None, "question": "What is 1 + 1?", "steps": steps, "labels": [0, 1, 1, 1]},
        {"image": None, "question": "Name the colour.", "steps": ["Red."], "labels": [0]},
    ]
    full = PRMCollator(processor, padding_side=padding_side)(examples)
    # cut the two long rollouts right after their second step token
    real = full["input_ids"][0][full["attention_mask"][0].bool()]
    max_length = int((real == step_id).nonzero()[1]) + 1
    collator = PRMCollator(processor, padding_side=padding_side, max_length=max_length, padding_free=padding_free,
                           rope_index=getattr(model.model, "get_rope_index", None))  # fmt: skip
    batch = collator(examples)
    assert batch["num_steps"].tolist() == [2, 2, 1]
    step_labels = batch["labels"][batch["input_ids"] == step_id].tolist()
    assert step_labels == [1.0, 1.0, 0.0, 1.0, 0.0]  # the first two steps of each with their labels, not the last
    assert (batch["labels"][batch["input_ids"] != step_id] == -100).all()
    if padding_free:
        assert batch["input_ids"].shape == (
            1,
            2 * max_length + len(full["input_ids"][2][full["attention_mask"][2].bool()]),
        )
    else:
        pad = batch["input_ids"] == processor.tokenizer.pad_token_id
        mask = batch["attention_mask"]
        assert batch["input_ids"].shape == (3, max_length) and (mask[:2] == 1).all()
        short = int(full["attention_mask"][2].sum())
        padded_side = mask[2, short:] if padding_side == "right" else mask[2, : max_length - short]
        assert (padded_side == 0).all() and pad[2][mask[2] == 0].all()
