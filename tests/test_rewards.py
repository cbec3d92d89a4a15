"""PRMReward as the reward of TRL's real GRPOTrainer and RLOOTrainer, and called directly: rewards equal the
aggregated `score_steps` of the completions' steps, images reach a multimodal PRM, unscorable completions get `None`
with their reasons counted."""

import logging
import math
import sys

import pytest
import torch
import trl
from datasets import Dataset

from bis_prm.data.steps import split_steps
from bis_prm.model.inference import StepScorer, aggregate_scores, score_steps
from bis_prm.model.modeling_prm import load_prm
from bis_prm.rewards import PRMReward
from tests.utils import image, tiny_base

QUESTION = "What is 3 + 4?"
SOLUTION = "3 + 4 = 7.\n\nThe answer is 7."


def _save_prm(base, path):
    """A tiny PRM with a random head, scaled so that its step scores spread over (0, 1)."""
    torch.manual_seed(0)
    model, processor = load_prm(base, head="linear")
    with torch.no_grad():
        model.score.weight.mul_(3.0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_prm(tmp_path_factory):
    return _save_prm(tiny_base("qwen2", tmp_path_factory), tmp_path_factory.mktemp("text-prm"))


@pytest.fixture(scope="module")
def vlm_prm(tmp_path_factory):
    return _save_prm(tiny_base("qwen2_5_vl", tmp_path_factory), tmp_path_factory.mktemp("vlm-prm"))


@pytest.fixture(scope="module")
def text_scorer(text_prm):
    """The PRM loaded a second time, for the expected scores."""
    return load_prm(text_prm)


class Recorder:
    """Passes TRL's calls through to a reward and records their arguments and results."""

    def __init__(self, reward):
        self.reward, self.calls = reward, []
        self.__name__ = reward.__name__

    def __call__(self, **kwargs):
        rewards = self.reward(**kwargs)
        self.calls.append((kwargs, rewards))
        return rewards


def _train(trainer_name, policy, reward, dataset, output_dir, max_steps=2):
    config_class, trainer_class = getattr(trl, f"{trainer_name}Config"), getattr(trl, f"{trainer_name}Trainer")
    args = config_class(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        max_completion_length=8,
        num_generations=2,
        per_device_train_batch_size=2,
        max_steps=max_steps,
        logging_steps=1,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    trainer = trainer_class(model=str(policy), reward_funcs=reward, args=args, train_dataset=dataset)
    trainer.train()
    return trainer


def _logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def _nanmean(values):
    values = [value for value in values if value is not None]
    return sum(values) / len(values)


def _text(content):
    return content if isinstance(content, str) else "\n".join(p["text"] for p in content if p["type"] == "text")


TRAINERS = ["GRPO"] + (["RLOO"] if hasattr(trl, "RLOOTrainer") else [])


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_the_trainer_logs_the_aggregated_step_scores_of_its_completions(
    trainer_name, conversational, text_prm, text_scorer, tmp_path_factory, tmp_path
):
    questions = ["What is 2 plus 3?", "What is 4 plus 4?"]
    prompts = [[{"role": "user", "content": q}] for q in questions] if conversational else questions
    reward = Recorder(PRMReward(text_prm, aggregation="min", name="step_prm"))
    trainer = _train(
        trainer_name, tiny_base("qwen2", tmp_path_factory), reward, Dataset.from_dict({"prompt": prompts}), tmp_path
    )

    assert len(reward.calls) == 2  # one generation batch (1 prompt x 2 generations) per step
    model, processor = text_scorer
    for kwargs, rewards in reward.calls:
        assert set(kwargs) >= {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric"}
        for prompt, completion, got in zip(kwargs["prompts"], kwargs["completions"], rewards, strict=True):
            question = prompt[-1]["content"] if conversational else prompt
            text = completion[0]["content"] if conversational else completion
            assert question in questions
            steps = split_steps(text)
            if not steps:
                assert got is None
                continue
            want = aggregate_scores(score_steps(model, processor, [{"question": question, "steps": steps}])[0], "min")
            assert got == pytest.approx(want, abs=1e-6)
    assert _logged(trainer, "rewards/step_prm/mean") == pytest.approx([_nanmean(r) for _, r in reward.calls])
    assert _logged(trainer, "rewards/step_prm/unscored_frac") == [
        sum(x is None for x in r) / 2 for _, r in reward.calls
    ]


def test_grpo_with_a_multimodal_prm_scores_the_samples_images(vlm_prm, tmp_path_factory, tmp_path):
    # TRL feeds a dataset's `image` column to the policy too, so the policy is a (tiny) VLM
    pictures = {"How many circles?": image("red"), "Which shape is blue?": image("blue", (56, 28))}
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": q}] for q in pictures], "image": list(pictures.values())}
    )
    reward = Recorder(PRMReward(vlm_prm, aggregation="mean"))
    trainer = _train("GRPO", tiny_base("qwen2_5_vl", tmp_path_factory), reward, dataset, tmp_path)

    model, processor = load_prm(vlm_prm)
    differs = 0
    for kwargs, rewards in reward.calls:
        for prompt, completion, got in zip(kwargs["prompts"], kwargs["completions"], rewards, strict=True):
            question = _text(prompt[-1]["content"])  # TRL made it [{"type": "image"}, {"type": "text"}]
            steps = split_steps(completion[0]["content"])
            row = {"question": question, "steps": steps, "image": pictures[question]}
            want = aggregate_scores(score_steps(model, processor, [row])[0], "mean")
            assert got == pytest.approx(want, abs=1e-5)
            blind = aggregate_scores(score_steps(model, processor, [{**row, "image": None}])[0], "mean")
            differs += abs(got - blind) > 1e-4
    assert differs == 4  # every reward saw its image
    assert _logged(trainer, "rewards/prm_reward/mean") == pytest.approx([_nanmean(r) for _, r in reward.calls])


def test_unscorable_completions_in_a_training_run_get_none_and_training_goes_on(text_prm, tmp_path_factory, tmp_path):
    behaviours = iter(["raise", "keep", "empty", "keep"])

    def splitter(text):
        behaviour = next(behaviours)
        if behaviour == "raise":
            raise RuntimeError("a splitter failing on one completion")
        return [] if behaviour == "empty" else [text]

    reward = Recorder(PRMReward(text_prm, split_steps=splitter))
    dataset = Dataset.from_dict({"prompt": ["What is 2 plus 3?", "What is 4 plus 4?"]})
    trainer = _train("GRPO", tiny_base("qwen2", tmp_path_factory), reward, dataset, tmp_path)
    assert [[x is None for x in rewards] for _, rewards in reward.calls] == [[True, False], [True, False]]
    assert _logged(trainer, "rewards/prm_reward/mean") == pytest.approx([r[1] for _, r in reward.calls])
    assert _logged(trainer, "rewards/prm_reward/unscored_frac") == [0.5, 0.5]


@pytest.mark.parametrize(
    ("aggregation", "reduce"),
    [("min", min), ("mean", lambda s: sum(s) / len(s)), ("last", lambda s: s[-1]), ("prod", math.prod)],
)
def test_direct_rewards_are_the_aggregated_step_scores(aggregation, reduce, text_prm, text_scorer):
    completions = [SOLUTION, "First 3.\n\n\n\nThen 4.\n\n  So 7.  \n\n"]  # empty pieces dropped, steps stripped
    steps = [["3 + 4 = 7.", "The answer is 7."], ["First 3.", "Then 4.", "So 7."]]
    got = PRMReward(text_prm, aggregation=aggregation)(prompts=[QUESTION] * 2, completions=completions)
    # 5 pieces, at most 2 steps: runs of ceil(5 / 2) = 3 pieces
    merged = PRMReward(text_prm, aggregation=aggregation, max_steps=2)
    got += merged(prompts=[QUESTION], completions=["1\n\n2\n\n3\n\n4\n\n5"])
    steps.append(["1\n\n2\n\n3", "4\n\n5"])

    model, processor = text_scorer
    scores = score_steps(model, processor, [{"question": QUESTION, "steps": s} for s in steps])
    assert got == pytest.approx([reduce(s) for s in scores], abs=1e-6)
    assert len({round(x, 3) for s in scores for x in s}) == 7  # the scores spread: the aggregations differ


def test_conversational_prompts_and_completions_score_like_their_text(text_prm):
    reward = PRMReward(text_prm, aggregation="mean")
    standard = reward(prompts=[QUESTION, QUESTION], completions=[SOLUTION, "3 + 4 = 8.\n\nThe answer is 8."])
    prompt = [
        {"role": "system", "content": "Answer step by step."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
    ]
    completions = [
        [{"role": "assistant", "content": SOLUTION}],
        [  # two assistant turns around a tool result: each turn ends a step
            {"role": "assistant", "content": "3 + 4 = 8."},
            {"role": "tool", "content": "calculator: 7"},
            {"role": "assistant", "content": [{"type": "text", "text": "The answer is 8."}]},
        ],
    ]
    assert reward(prompts=[prompt, prompt], completions=completions) == pytest.approx(standard, abs=1e-6)


def test_unscorable_completions_get_none_and_one_warning_with_the_counts(text_prm, caplog):
    scorer = StepScorer(*load_prm(text_prm))
    good, long = {"question": QUESTION, "steps": ["3 + 4 = 7."]}, {"question": QUESTION, "steps": ["7 " * 200]}
    max_length = scorer.lengths([good])[0] + 2
    assert scorer.lengths([long])[0] > max_length
    reward = PRMReward(text_prm, max_length=max_length)
    logged = {}
    with caplog.at_level(logging.WARNING, logger="bis_prm.rewards.prm_reward"):
        rewards = reward(
            prompts=[QUESTION] * 5 + [[{"role": "system", "content": "no user turn"}]],
            completions=["", "\n\n  \n\n", "7 " * 200, "3 + 4 = 7 <prm> yes.", "3 + 4 = 7.", "3 + 4 = 7."],
            log_extra=lambda column, values: logged.update({column: values}),
            log_metric=lambda name, value: logged.update({name: value}),
        )
    assert rewards[:4] == [None] * 4 and rewards[5] is None
    assert isinstance(rewards[4], float)
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "prm_reward: 5 of 6 completions could not be scored (bad_format: 1, no_steps: 2, step_token_in_text: 1, "
        "too_long: 1); their reward is None, which TRL leaves out."
    ]
    assert logged["rewards/prm_reward/unscored_frac"] == pytest.approx(5 / 6)
    step_scores = logged["prm_reward/step_scores"]
    assert [s is None for s in step_scores] == [True, True, True, True, False, True]
    assert step_scores[4] == pytest.approx([rewards[4]])

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bis_prm.rewards.prm_reward"):
        assert reward(prompts=[QUESTION] * 2, completions=["3 + 4 = 7.", ""])[1] is None
    assert [record.getMessage() for record in caplog.records] == [  # only the reasons that occurred
        "prm_reward: 1 of 2 completions could not be scored (no_steps: 1); their reward is None, which TRL leaves out."
    ]


def test_images_come_from_the_image_or_images_column_or_the_prompt(vlm_prm, text_prm):
    reward = PRMReward(vlm_prm, aggregation="mean")
    red, blue = image("red"), image("blue", (56, 28))
    prompts, completions = [QUESTION, QUESTION], [SOLUTION, SOLUTION]
    from_image = reward(prompts=prompts, completions=completions, image=[red, blue])
    assert reward(prompts=prompts, completions=completions, images=[[red], [blue]]) == from_image
    in_prompt = [[{"role": "user", "content": [{"type": "image", "image": p}, {"type": "text", "text": QUESTION}]}]
                 for p in (red, blue)]  # fmt: skip
    assert reward(prompts=in_prompt, completions=completions) == from_image
    model, processor = load_prm(vlm_prm)
    rows = [{"question": QUESTION, "steps": split_steps(SOLUTION), "image": p} for p in (red, blue)]
    assert from_image == pytest.approx([sum(s) / len(s) for s in score_steps(model, processor, rows)], abs=1e-6)
    assert abs(from_image[0] - from_image[1]) > 1e-4

    text = PRMReward(text_prm)  # a text PRM scores the text and leaves the images
    assert text(prompts=prompts, completions=completions, image=[red, blue]) == text(prompts, completions)


def test_bad_arguments_are_refused_by_name(text_prm):
    with pytest.raises(ValueError, match="exactly one of `model`"):
        PRMReward()
    with pytest.raises(ValueError, match="exactly one of `model`"):
        PRMReward(text_prm, url="http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="Unknown aggregation 'median'"):
        PRMReward(text_prm, aggregation="median")
    with pytest.raises(ValueError, match="max_length"):
        PRMReward(url="http://127.0.0.1:8000", max_length=512)
    with pytest.raises(ValueError, match="3 prompts for 2 completions"):
        PRMReward(text_prm)(prompts=[QUESTION] * 3, completions=[SOLUTION] * 2)


def test_the_prm_loads_whole_inside_a_zero3_run(text_prm):
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    expected = PRMReward(text_prm)(prompts=[QUESTION], completions=[SOLUTION])
    config = HfDeepSpeedConfig({"train_batch_size": 1, "zero_optimization": {"stage": 3}})  # what GRPOConfig makes
    try:
        assert is_deepspeed_zero3_enabled()
        reward = PRMReward(text_prm)
        assert is_deepspeed_zero3_enabled()  # the run's config is back
        assert not any(hasattr(p, "ds_id") for p in reward.scorer.model.parameters())  # not partitioned
        assert reward(prompts=[QUESTION], completions=[SOLUTION]) == pytest.approx(expected, abs=1e-6)
    finally:
        unset_hf_deepspeed_config()
        del config


def test_the_tiny_grpo_recipe_runs_and_logs_the_prm_reward(text_prm, tmp_path_factory, tmp_path, monkeypatch):
    import importlib.util
    import json

    from trl import GRPOConfig, ModelConfig, TrlParser

    from bis_prm.data.sample import make_text_sample
    from tests.utils import REPO_ROOT

    spec = importlib.util.spec_from_file_location("grpo_recipe", REPO_ROOT / "recipes" / "grpo" / "grpo.py")
    recipe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "grpo_recipe", recipe)  # dataclasses look their module up there
    spec.loader.exec_module(recipe)
    # the working directory the recipe's comments prepare
    make_text_sample(tmp_path / "data" / "text-sample", num_rollouts=40, num_benchmark_rows=4)
    (tmp_path / "data" / "tiny-qwen2").symlink_to(tiny_base("qwen2", tmp_path_factory))
    (tmp_path / "data" / "tiny-qwen2-PRM-text").symlink_to(text_prm)
    monkeypatch.chdir(tmp_path)

    parser = TrlParser((recipe.GRPOScriptArguments, GRPOConfig, ModelConfig))
    config = str(REPO_ROOT / "recipes" / "grpo" / "config_tiny.yaml")
    script_args, training_args, model_args = parser.parse_args_and_config(
        ["--config", config, "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "4"]
    )
    assert script_args.prm_separator == "\n\n" and script_args.prompt_column == "question"
    dataset = recipe.load_prompts(script_args)
    assert dataset[0]["prompt"][0]["role"] == "system" and dataset[0]["prompt"][1]["content"].startswith("What is")

    recipe.main(script_args, training_args, model_args)
    history = json.loads((tmp_path / "data" / "tiny-qwen2-GRPO-PRM" / "trainer_state.json").read_text())["log_history"]
    means = [entry["rewards/prm_reward/mean"] for entry in history if "rewards/prm_reward/mean" in entry]
    assert len(means) == 2 and all(0.0 < mean < 1.0 for mean in means)
    assert (tmp_path / "data" / "tiny-qwen2-GRPO-PRM" / "model.safetensors").is_file()
