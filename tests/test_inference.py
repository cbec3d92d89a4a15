import copy
import json
import math

import pytest
import torch

from bis_prm.model.inference import aggregate_many, aggregate_scores, score_steps
from bis_prm.model.modeling_prm import load_prm
from tests.utils import rollouts, tiny_base


@pytest.fixture(scope="module", params=["qwen2_5_vl", "internvl", "llava", "qwen2_vl"])
def prm(request, tmp_path_factory):
    torch.manual_seed(0)
    return load_prm(tiny_base(request.param, tmp_path_factory), head="linear")


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_scores_equal_one_by_one(prm, padding_side):
    model, processor = prm
    examples = rollouts()
    one_by_one = [score_steps(model, processor, [example])[0] for example in examples]
    batched = score_steps(model, processor, examples, batch_size=3, padding_side=padding_side)
    assert [len(scores) for scores in batched] == [2, 4, 1, 3]
    for got, want in zip(batched, one_by_one, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert all(0.0 < score < 1.0 for scores in batched for score in scores)


def test_score_steps_matches_logits_and_restores_mode(prm):
    model, processor = prm
    model.train()
    scores = score_steps(model, processor, rollouts()[:1])
    assert model.training
    model.eval()
    from bis_prm.model.processing_prm import PRMCollator

    batch = PRMCollator(processor)(rollouts()[:1])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    expected = logits[batch["input_ids"][0] == model.config.step_token_id].softmax(-1)[:, 1]  # index 1 = correct
    assert scores[0] == pytest.approx(expected.tolist(), abs=1e-6)


def test_a_checkpoint_saved_with_the_class_order_of_0_2_scores_as_before(prm, tmp_path):
    # 0.2.0.dev0 saved row 0 = positive ({"positive": 0, "negative": 1}); 0.3 saves [negative, positive]
    model, processor = prm
    assert model.config.id2label == {0: "negative", 1: "positive"}
    old = tmp_path / "old"
    model.save_pretrained(old)
    processor.save_pretrained(old)
    config = json.loads((old / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "positive", "1": "negative"}, {"positive": 0, "negative": 1}
    (old / "config.json").write_text(json.dumps(config))
    legacy, _ = load_prm(old)
    with torch.no_grad():
        legacy.score.weight.copy_(model.score.weight.flip(0))
        legacy.score.bias.copy_(model.score.bias.flip(0))
    expected = [score for row in score_steps(model, processor, rollouts()) for score in row]
    got = [score for row in score_steps(legacy, processor, rollouts()) for score in row]
    assert got == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx([1 - score for score in expected], abs=1e-3)  # reading index 1 would fail


def test_score_steps_names_the_bad_rollout(prm):
    model, processor = prm
    examples = rollouts()
    examples[2]["steps"] = []
    with pytest.raises(ValueError, match=r"^Rollout 2: The rollout has no step"):
        score_steps(model, processor, examples, batch_size=2)


def test_aggregate_scores():
    scores = [0.9, 0.5, 0.8]
    assert aggregate_scores(scores, "mean") == pytest.approx(2.2 / 3)
    assert aggregate_scores(scores, "min") == 0.5
    assert aggregate_scores(scores, "last") == 0.8
    assert aggregate_scores(scores, "prod") == pytest.approx(0.36)
    with pytest.raises(ValueError, match="Unknown aggregation 'max'"):
        aggregate_scores(scores, "max")
    with pytest.raises(ValueError, match="without step scores"):
        aggregate_scores([], "mean")


@pytest.mark.parametrize("method", ["mean", "min", "last", "prod"])
def test_aggregate_many_matches_one_by_one(method):
    many = [[0.9, 0.5, 0.8], [0.2], [0.6, 0.7]]
    expected = {
        "mean": [sum(s) / len(s) for s in many],
        "min": [min(s) for s in many],
        "last": [s[-1] for s in many],
        "prod": [math.prod(s) for s in many],
    }[method]
    assert aggregate_many(many, method).tolist() == pytest.approx(expected)
    assert [aggregate_scores(s, method) for s in many] == pytest.approx(expected)
    with pytest.raises(ValueError, match="Rollout 1 has no step scores"):
        aggregate_many([[0.5], []], method)


def test_token_counts_are_the_lengths_the_model_sees(prm):
    from bis_prm.model.inference import rollout_token_counts
    from bis_prm.model.processing_prm import PRMCollator

    model, processor = prm
    examples = rollouts()
    counts = rollout_token_counts(processor, examples)
    collator = PRMCollator(processor)
    assert counts == [int(collator([example])["attention_mask"].sum()) for example in examples]
    broken = {"question": "q", "steps": []}
    assert rollout_token_counts(processor, [broken, examples[2]]) == [0, counts[2]]  # reported later, not here

    # what the processor's own count covers changes between versions (InternVL's: with <img></img> in transformers
    # 5.24, without in 5.25): the counts stay exact
    shifted = copy.deepcopy(processor)
    own_count = shifted._get_num_multimodal_tokens

    def plus_two(**kwargs):
        data = own_count(**kwargs)
        data.num_image_tokens = [count + 2 for count in data.num_image_tokens]
        return data

    shifted._get_num_multimodal_tokens = plus_two
    assert rollout_token_counts(shifted, examples) == counts


def test_batches_are_planned_by_length_and_dealt_by_tokens():
    from bis_prm.model.inference import deal_batches, plan_batches

    lengths = [5, 30, 10, 28, 9, 30]
    assert plan_batches(lengths, max_batch_size=2) == [[1, 5], [3, 2], [4, 0]]
    # 60 tokens at most, counting padding to the longest row of the batch
    assert plan_batches(lengths, max_batch_size=8, max_batch_tokens=60) == [[1, 5], [3, 2], [4, 0]]
    assert plan_batches(lengths, max_batch_size=8, max_batch_tokens=30) == [[1], [5], [3], [2, 4, 0]]
    assert plan_batches([100, 1], max_batch_size=8, max_batch_tokens=10) == [[0], [1]]  # too long: alone
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        plan_batches(lengths, max_batch_size=0)
    batches = [[1], [5], [3], [2, 4, 0]]  # costs 30, 30, 28, 30
    dealt = deal_batches(batches, lengths, num_processes=2)
    assert sorted(sum(dealt, [])) == [0, 1, 2, 3] and dealt == [[0, 3], [1, 2]]
    assert deal_batches(batches, lengths, num_processes=5)[4] == []


def test_loader_workers_give_the_same_scores(prm):
    model, processor = prm
    examples = rollouts() * 3
    without = score_steps(model, processor, examples, batch_size=2)
    with_workers = score_steps(model, processor, examples, batch_size=2, num_workers=2)
    assert with_workers == without


def test_score_rows_renders_a_call_that_fits_once_and_plans_one_that_does_not(prm, monkeypatch):
    from bis_prm.model.inference import StepScorer
    from bis_prm.model.processing_prm import ExampleError

    model, processor = prm
    rows = [*rollouts(), {"question": "q", "steps": []}]
    planned = [None] * len(rows)
    reference = StepScorer(model, processor, max_batch_size=2)
    for row, scores, failure in reference.iter_scores(rows, reference.plan(rows)):
        planned[row] = scores if failure is None else failure[0]

    scorer = StepScorer(model, processor, max_batch_size=len(rows), max_batch_tokens=100_000)
    renders, render = [], scorer.collator.render
    monkeypatch.setattr(scorer.collator, "render", lambda example, index=0: renders.append(index) or render(example))
    monkeypatch.setattr(scorer, "lengths", lambda examples: pytest.fail("a call that fits was planned"))
    once = scorer.score_rows(rows)
    assert sorted(renders) == list(range(len(rows))) and scorer.stats.batches == 1
    assert isinstance(once[-1], ExampleError) and once[-1].reason == planned[-1] == "no_steps"
    for got, want in zip(once[:-1], planned[:-1], strict=True):
        assert got == pytest.approx(want, abs=1e-5)

    # over the token budget: planned as before, into batches within it
    monkeypatch.undo()
    tight = StepScorer(model, processor, max_batch_size=len(rows), max_batch_tokens=max(reference.lengths(rows)))
    split = tight.score_rows(rows)
    with_steps = [batch for batch in tight.plan(rows) if set(batch) != {len(rows) - 1}]
    assert len(with_steps) >= 2 and tight.stats.batches == len(with_steps) and split[-1].reason == "no_steps"
    for got, want in zip(split[:-1], planned[:-1], strict=True):
        assert got == pytest.approx(want, abs=1e-5)
