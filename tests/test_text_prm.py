"""Text PRMs: causal LMs that transformers loads become PRMs with the same heads, collator, packing, inference,
trainer and evaluation as the VLMs; rows without images work everywhere."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from bis_prm.cli import main
from bis_prm.data.sample import make_text_sample
from bis_prm.model.inference import rollout_token_counts, score_steps
from bis_prm.model.modeling_prm import load_prm, prm_lora_config, prm_loss, yes_no_token_ids
from bis_prm.model.processing_prm import PRMCollator
from tests.utils import REPO_ROOT, tiny_base

ROWS = [
    {"question": "What is 3 + 4?", "steps": ["3 + 4 = 7.", "The answer is 7."], "labels": [1.0, 0.0]},
    {"question": "What is 2 + 2?", "steps": ["2 + 2 = 5."], "labels": [0.0]},
    {"question": "What is 5 times 2?", "steps": ["5 x 2 = 10.", "So 10.", "The answer is 10."], "labels": [1, 1, 1]},
]


@pytest.fixture(scope="module", params=["qwen2", "llama-base"])
def text_prm(request, tmp_path_factory):
    base = tiny_base(request.param, tmp_path_factory)
    model, tokenizer = load_prm(base)
    return base, model, tokenizer


def _inputs(batch):
    return {key: value for key, value in batch.items() if key not in ("labels", "num_steps")}


def test_a_causal_lm_becomes_transformers_own_token_classifier(text_prm):
    base, model, tokenizer = text_prm
    assert type(model).__name__ in ("Qwen2ForTokenClassification", "LlamaForTokenClassification")
    assert not hasattr(tokenizer, "image_processor")
    # the yes_no head computes the LM's own logits restricted to "Yes" / "No" at every position
    collator = PRMCollator(tokenizer)
    batch = collator(ROWS)
    lm = AutoModelForCausalLM.from_pretrained(base).eval()
    lm.resize_token_embeddings(model.get_input_embeddings().num_embeddings, mean_resizing=False)
    lm.get_input_embeddings().weight.data.copy_(model.get_input_embeddings().weight.data)
    with torch.no_grad():
        yes, no = yes_no_token_ids(tokenizer)
        expected = lm(**_inputs(batch)).logits[..., [no, yes]]  # [negative, positive]
        got = model(**_inputs(batch)).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-4, atol=1e-5)


def test_text_rows_collate_with_labels_at_the_step_tokens_and_pack_exactly(text_prm):
    _, model, tokenizer = text_prm
    batch = PRMCollator(tokenizer)(ROWS)
    step_id = tokenizer.convert_tokens_to_ids("<prm>")
    assert batch["num_steps"].tolist() == [2, 1, 3]
    for row, example in enumerate(ROWS):
        positions = (batch["input_ids"][row] == step_id).nonzero().squeeze(1)
        assert batch["labels"][row, positions].tolist() == [float(label) for label in example["labels"]]
    # the token counts used for batching are the tokens the collator makes (BOS included without a chat template)
    assert rollout_token_counts(tokenizer, ROWS) == batch["attention_mask"].sum(dim=1).tolist()
    if getattr(tokenizer, "chat_template", None) is None:
        assert batch["input_ids"][0, 0] == tokenizer.bos_token_id or tokenizer.bos_token_id is None
        assert (
            tokenizer.decode(batch["input_ids"][0])
            .lstrip()
            .startswith((tokenizer.bos_token or "") + "Question: What is 3 + 4?")
        )
    packed = PRMCollator(tokenizer, padding_free=True)(ROWS)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        padded_loss = prm_loss(model(**_inputs(batch)).logits, batch["labels"])
        packed_loss = prm_loss(model(**_inputs(packed)).logits, packed["labels"])
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)


def test_score_steps_and_images_given_to_a_text_prm(text_prm):
    _, model, tokenizer = text_prm
    scores = score_steps(model, tokenizer, ROWS, batch_size=2)
    assert [len(s) for s in scores] == [2, 1, 3] and all(0 < v < 1 for s in scores for v in s)
    alone = score_steps(model, tokenizer, ROWS[2:], batch_size=1)
    torch.testing.assert_close(torch.tensor(scores[2]), torch.tensor(alone[0]), rtol=1e-4, atol=1e-5)
    with_image = {**ROWS[0], "image": "fig.png"}
    batch, kept, failures = PRMCollator(tokenizer).collate_skipping([with_image, ROWS[1]])
    assert kept == [1] and failures[0][:2] == (0, "image_for_text_model")


def test_lora_targets_the_text_model_layers(text_prm):
    from peft import get_peft_model

    _, model, _ = text_prm
    peft_model = get_peft_model(model, prm_lora_config(r=4))
    adapted = {name.split(".lora_A")[0] for name, _ in peft_model.named_parameters() if ".lora_A" in name}
    layers = model.config.num_hidden_layers
    assert len(adapted) == 7 * layers  # q, k, v, o, gate, up, down in every layer
    assert peft_model.base_model.model.score.modules_to_save["default"].weight.requires_grad
    peft_model.unload()


def _majority(selection_ratio: float, corpus, seed: int = 42) -> float:
    """Share of the majority class among the held-out steps of the recipe's split."""
    from bis_prm.data.selection import run_selection

    subset = run_selection(corpus, ratio=selection_ratio, alpha=0.05).to_prm()
    labels = sum(subset.train_test_split(test_size=0.1, seed=seed)["test"]["labels"], [])
    positive = sum(label > 0 for label in labels) / len(labels)
    return max(positive, 1 - positive)


@pytest.fixture(scope="module")
def text_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("text_recipe")
    make_text_sample(workdir / "data" / "text-sample")
    assert main(["make-tiny-lm", "--arch", "qwen2", "--output", str(workdir / "data" / "tiny-qwen2")]) == 0
    return workdir


@pytest.mark.parametrize("source", ["mc_corpus", "trl"])
def test_the_text_recipe_learns_far_above_the_majority_class(text_workdir, source):
    overrides = ["--max_steps", "200", "--output_dir", f"data/out-{source}"]
    if source == "trl":
        # the same rollouts in TRL's stepwise format: hard labels, so BIS ranks them by label mixture (R = 1)
        selection = {"method": "bis", "ratio": 0.25, "alpha": 0.05, "layout": "stepwise"}
        overrides += ["--dataset_name", "data/text-sample/trl/train.jsonl", "--selection", json.dumps(selection)]
    command = [sys.executable, str(REPO_ROOT / "recipes" / "train.py"), "--config"]
    command += [str(REPO_ROOT / "recipes" / "tiny" / "config_text.yaml"), *overrides]
    subprocess.run(command, cwd=text_workdir, check=True, capture_output=True)
    results = json.loads((text_workdir / f"data/out-{source}/eval_results.json").read_text())
    corpus = text_workdir / "data/text-sample" / ("trl/train.jsonl" if source == "trl" else "corpus")
    majority = _majority(0.25, corpus)
    assert 0.5 <= majority < 0.75
    assert results["eval_step_accuracy"] > majority + 0.1
    assert results["eval_f1_negative"] > 0.6
    model = AutoModelForTokenClassification.from_pretrained(text_workdir / f"data/out-{source}")
    assert type(model).__name__ == "Qwen2ForTokenClassification"


def test_eval_and_best_of_n_on_text_rows(text_workdir, tmp_path):
    trained = text_workdir / "data/out-mc_corpus"
    if not trained.exists():
        pytest.skip("needs the text recipe's model")
    out = tmp_path / "eval"
    benchmark = text_workdir / "data/text-sample/benchmark"
    assert main(["eval", "--model", str(trained), "--benchmark", str(benchmark), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_source"]) == {"addition", "multiplication", "chains", "word_problems"}
    statistics = json.loads((text_workdir / "data/text-sample/statistics.json").read_text())["benchmark"]
    assert metrics["total_steps"] == statistics["labels"]["1"] + statistics["labels"]["-1"]  # every row scored
    # a constant score gets a macro-F1 below 0.4 (one class has F1 0)
    assert metrics["micro_over_sources"] > 0.5
    question = {"id": "q", "question": "What is 3 plus 4?", "answer": "7", "candidates": []}
    good = ["The first number is 3.", "The second number is 4.", "3 + 4 = 7.", "The answer is 7."]
    bad = ["The first number is 3.", "The second number is 4.", "3 + 4 = 10.", "The answer is 10."]
    question["candidates"] = [{"steps": bad, "answer": "10"}, {"steps": good, "answer": "7"}]
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(json.dumps(question) + "\n")
    choices = tmp_path / "choices.jsonl"
    assert main(["bon", "--model", str(trained), "--candidates", str(candidates), "--output", str(choices)]) == 0
    assert len(choices.read_text().splitlines()) == 1
