import inspect
import os
import re

import numpy as np
import pytest
import torch
import transformers
import trl
from packaging.version import Version
from transformers.trainer_utils import EvalPrediction

from bis_prm.model.inference import score_steps
from bis_prm.model.modeling_prm import load_prm
from bis_prm.model.vision_tower import freeze_vision_tower
from bis_prm.serving.vllm import vllm_serve_command_line
from bis_prm.training.dataset import PRMDatasetError, prepare_prm_dataset
from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.prm_trainer import PRMTrainer, compute_step_metrics, positive_probabilities
from tests.utils import prm_dataset, state_dict_cpu, tiny_base, tiny_config, write_images


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("prm_trainer")
    return {"model": str(tiny_base("qwen2_5_vl", tmp_path_factory)), "images": write_images(root / "images")}


# ---- the TRL base we rely on ----


def test_trl_base_guard():
    """Fails when the private TRL base (or the transformers hooks) that PRMTrainer builds on moves."""
    from trl.trainer.base_config import _BaseConfig
    from trl.trainer.base_trainer import _BaseTrainer

    assert Version("1.10") <= Version(trl.__version__) < Version("1.17"), "update the TRL pin in setup.cfg"
    assert PRMTrainer.__mro__[1:3] == (_BaseTrainer, transformers.Trainer)
    assert PRMConfig.__mro__[1:3] == (_BaseConfig, transformers.TrainingArguments)
    # _BaseConfig supplies these defaults; PRMConfig documents them as TRL's
    fields = _BaseConfig.__dataclass_fields__
    assert fields["gradient_checkpointing"].default is True and fields["logging_steps"].default == 10
    assert "_VALID_DICT_FIELDS" in vars(transformers.TrainingArguments)
    # Model-card hook and metadata attributes we override / fill
    assert list(inspect.signature(_BaseTrainer.create_model_card).parameters) == [
        "self",
        "model_name",
        "dataset_name",
        "tags",
    ]
    assert {"_tag_names", "_name", "_paper", "loss_is_scaled_for_ga"} <= set(vars(_BaseTrainer))
    # Gradient accumulation: the Trainer counts `labels != -100` and passes `num_items_in_batch` to compute_loss
    assert "num_items_in_batch" in inspect.signature(transformers.Trainer.compute_loss).parameters
    assert "labels.ne(-100)" in inspect.getsource(transformers.Trainer._get_num_items_in_batch)
    assert "train_sampling_strategy" in transformers.TrainingArguments.__dataclass_fields__


# ---- pure pieces ----


def test_positive_probabilities_keeps_only_labelled_positions():
    logits = torch.zeros(2, 4, 2)  # [negative, positive]
    logits[0, 1] = torch.tensor([0.0, 2.0])
    logits[0, 3] = torch.tensor([2.0, 0.0])
    logits[1, 2] = torch.tensor([0.0, 1.0])
    labels = torch.full((2, 4), -100.0)
    labels[0, 1], labels[0, 3], labels[1, 2] = 1.0, 0.0, 1.0
    sig2, sig1 = torch.sigmoid(torch.tensor(2.0)).item(), torch.sigmoid(torch.tensor(1.0)).item()
    expected = torch.tensor([[-100.0, sig2, -100.0, 1 - sig2], [-100.0, -100.0, sig1, -100.0]])
    torch.testing.assert_close(positive_probabilities(logits, labels), expected)
    # a 0.2.0.dev0 checkpoint (positive class first) reads the other column
    torch.testing.assert_close(positive_probabilities(logits.flip(-1), labels, positive_index=0), expected)


def test_compute_step_metrics_against_hand_counts():
    # 6 labelled steps: targets 1,0,1,1,0,0 ; predictions 1,0,0,1,1,0 -> TP=2 FN=1 FP=1 TN=2
    preds = np.array([[0.9, -100, 0.1, 0.4, -100], [0.8, 0.7, -100, 0.2, -100]])
    labels = np.array([[1.0, -100, 0.0, 1.0, -100], [1.0, 0.0, -100, 0.0, -100]])
    metrics = compute_step_metrics(EvalPrediction(predictions=preds, label_ids=labels))
    assert metrics == pytest.approx({"step_accuracy": 4 / 6, "f1_positive": 4 / 6, "f1_negative": 4 / 6})
    # A different confusion matrix gives different F1s per class
    preds = np.array([[0.9, 0.9, 0.9, 0.9]])
    labels = np.array([[1.0, 1.0, 1.0, 0.0]])
    metrics = compute_step_metrics(EvalPrediction(predictions=preds, label_ids=labels))
    assert metrics == pytest.approx({"step_accuracy": 0.75, "f1_positive": 6 / 7, "f1_negative": 0.0})


# ---- the row checks before training ----


def test_missing_columns_are_an_error_naming_them(assets, tmp_path):
    dataset = prm_dataset(assets["images"]).remove_columns(["steps"])
    with pytest.raises(PRMDatasetError, match=re.escape("missing the required column(s) ['steps']")):
        prepare_prm_dataset(dataset, PRMConfig(str(tmp_path)))
    # hard labels come from the labels column, whatever MC scores the dataset has
    no_labels = prm_dataset(assets["images"]).remove_columns(["labels"])
    with pytest.raises(PRMDatasetError, match=re.escape("['labels']")):
        prepare_prm_dataset(no_labels, PRMConfig(str(tmp_path)))
    soft = PRMConfig(str(tmp_path), label_mode="soft")
    with pytest.raises(PRMDatasetError, match=re.escape("['mc_scores']")):
        prepare_prm_dataset(prm_dataset(assets["images"], with_mc=False), soft)


def test_bad_rows_are_dropped_and_reported_by_row(assets, tmp_path):
    from datasets import Dataset

    rows = prm_dataset(assets["images"]).to_list()
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    rows[1]["labels"] = rows[1]["labels"][:-1]
    rows[3]["labels"][0] = 1.5
    rows[5]["image"] = [str(tmp_path / "nowhere.png")]
    rows[6]["steps"], rows[6]["labels"], rows[6]["mc_scores"] = [], [], []
    rows[7]["image"] = [str(tmp_path / "corrupt.png")]
    rows[2]["steps"][0] = "a <prm> b"
    train, check = prepare_prm_dataset(Dataset.from_list(rows), PRMConfig(str(tmp_path)))
    assert check.rows == 8 and check.counts() == {
        "length_mismatch": 1,
        "bad_label": 1,
        "missing_image": 1,
        "no_steps": 1,
        "image_unreadable": 1,
        "step_token_in_text": 1,
    }
    assert {row for rows in check.dropped.values() for row, _ in rows} == {1, 2, 3, 5, 6, 7}
    assert train["row_index"] == [0, 4] and train["labels"] == [rows[0]["labels"], rows[4]["labels"]]
    report = check.describe()
    assert "6 of 8 rows of the train dataset dropped" in report
    assert f"row 5: missing_image: image '{tmp_path / 'nowhere.png'}' not found" in report
    # with nothing left to train on, it is an error
    with pytest.raises(PRMDatasetError, match="No row of the train dataset can be trained on"):
        prepare_prm_dataset(Dataset.from_list([rows[i] for i in (1, 3, 5)]), PRMConfig(str(tmp_path)))


def test_targets_are_the_labels_or_the_mc_scores_and_images_resolve_inside_their_root(assets, tmp_path):
    from datasets import Dataset

    root = os.path.dirname(assets["images"][0])
    rows = prm_dataset([os.path.basename(p) for p in assets["images"]], num_rows=4).to_list()
    for row in rows:
        row["image_root"] = root
        row["mc_scores"] = [0.25 + 0.5 * label for label in row["labels"]]  # differs from the labels
    rows[2]["image"] = ["../" + os.path.basename(root) + "/../escape.png"]
    hard, check = prepare_prm_dataset(Dataset.from_list(rows), PRMConfig(str(tmp_path)))
    assert check.counts() == {"image_outside_root": 1}
    assert hard["labels"] == [row["labels"] for i, row in enumerate(rows) if i != 2]
    assert hard["image"][0] == [os.path.join(root, os.path.basename(assets["images"][0]))]
    soft, _ = prepare_prm_dataset(Dataset.from_list(rows), PRMConfig(str(tmp_path), label_mode="soft"))
    assert soft["labels"] == [row["mc_scores"] for i, row in enumerate(rows) if i != 2]
    # PRMConfig.image_root takes over from the column
    moved = [{**row, "image_root": "/nowhere"} for row in rows[:2]]
    overridden, check = prepare_prm_dataset(Dataset.from_list(moved), PRMConfig(str(tmp_path), image_root=root))
    assert check.num_dropped() == 0 and len(overridden) == 2


def test_trainer_checks_columns_before_loading_the_model(assets, tmp_path):
    bad = prm_dataset(assets["images"]).remove_columns(["question"])
    # "not/a/model" would fail to load: the dataset error must come first
    with pytest.raises(PRMDatasetError, match=re.escape("missing the required column(s) ['question']")):
        PRMTrainer("not/a/model", args=tiny_config(tmp_path), train_dataset=bad)
    with pytest.raises(PRMDatasetError, match="The eval dataset"):
        PRMTrainer(
            "not/a/model",
            args=tiny_config(tmp_path),
            train_dataset=prm_dataset(assets["images"]),
            eval_dataset=prm_dataset(assets["images"]).remove_columns(["labels"]),
        )


def test_a_rollout_failing_at_collate_time_is_skipped_and_counted(assets, tmp_path):
    from datasets import Dataset

    rows = prm_dataset(assets["images"], num_rows=8).to_list()
    # a PNG whose header reads fine but whose pixels are cut: only decoding finds it
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(assets["images"][0], "rb").read()[:200])
    rows[5]["image"] = [str(truncated)]
    args = tiny_config(
        tmp_path / "out", max_steps=4, per_device_train_batch_size=2, train_sampling_strategy="sequential"
    )
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=Dataset.from_list(rows))
    assert trainer.dataset_checks["train"].num_dropped() == 0
    trainer.train()
    assert trainer.state.global_step == 4
    assert [(row, reason) for row, reason, _ in trainer.skipped_rollouts["train"]] == [(5, "image_unreadable")]
    assert max(entry.get("rollouts_skipped", 0) for entry in trainer.state.log_history) == 1
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "train batches: 1 rollouts skipped while collating" in card

    # the same problem in the very first batch stops the run: a broken dataset is not trained on silently
    rows[0]["image"] = [str(truncated)]
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=Dataset.from_list(rows))
    with pytest.raises(
        PRMDatasetError, match=r"first training batch could not be rendered:\n  - row 0: image_unreadable"
    ):
        trainer.train()


def test_a_batch_of_only_bad_rollouts_runs_with_no_weight(assets, tmp_path):
    from bis_prm.model.processing_prm import PRMCollator
    from bis_prm.training.prm_trainer import SkippingCollator

    _, processor = load_prm(assets["model"])
    good, bad = prm_dataset(assets["images"], num_rows=2).to_list()
    bad = {**bad, "image": [str(tmp_path / "missing.png")], "row_index": 9}
    batch = SkippingCollator(PRMCollator(processor), fallback=good)([bad])
    assert batch["skipped"] == [(9, "missing_image", f"image '{tmp_path / 'missing.png'}' not found")]
    assert (batch["labels"] == -100).all() and batch["input_ids"].shape[0] == 1


# ---- model preparation ----


def test_freeze_vision_tower_keeps_projector_and_llm_trainable(assets):
    model, _ = load_prm(assets["model"], head="yes_no")
    frozen = freeze_vision_tower(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    visual = [name for name, _ in model.named_parameters() if ".visual." in f".{name}"]
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if n in visual and "merger" not in n) > 0
    assert all(name not in trainable for name in visual if "merger" not in name)
    assert any("merger" in name for name in trainable)  # the projector
    assert "score.weight" in trainable and any("language_model" in name for name in trainable)


# ---- training ----


def test_train_loss_decreases_saves_and_scores(assets, tmp_path):
    train = prm_dataset(assets["images"], num_rows=8)
    args = tiny_config(tmp_path / "out", max_steps=12, per_device_train_batch_size=4, learning_rate=2e-3)
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=train, eval_dataset=train)
    before = state_dict_cpu(trainer.model)
    trainer.train()

    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 12 and "step_accuracy" in trainer.state.log_history[0]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    after = state_dict_cpu(trainer.model)
    assert not torch.equal(before["score.weight"], after["score.weight"])
    frozen_vit = [name for name in before if ".visual.blocks." in f".{name}"]
    assert frozen_vit and all(torch.equal(before[name], after[name]) for name in frozen_vit)

    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_step_accuracy", "eval_f1_positive", "eval_f1_negative"} <= set(metrics)

    trainer.save_model(args.output_dir)
    assert "No VisualProcessBench" not in (tmp_path / "out" / "README.md").read_text()  # saving writes the card
    selection = {"params": {"corpus": "corpus", "method": "bis", "ratio": 0.1, "alpha": 0.2}}
    selection["total"] = {"kept": 4, "read": 40, "valid": 38}
    trainer.create_model_card(dataset_name="local", selection=selection, eval_results=metrics)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "ratio `0.1`, alpha\n  `0.2`" in card and "Kept 4 of 40 rollouts (38 valid)." in card
    assert f"| eval_f1_positive | {metrics['eval_f1_positive']:.4f} |" in card and "eval_runtime" not in card
    assert "Not evaluated on VisualProcessBench yet" in card
    assert vllm_serve_command_line("out", trainer.model.config.step_token_id) in card  # "Serving with vLLM"
    vpb = {
        "threshold": 0.5,
        "threshold_source": "fixed",
        "total_steps": 30,
        "micro_over_sources": 0.61234,
        "per_source": {"MMMU": {"steps": 10, "macro_f1": 0.5}, "WeMath": {"steps": 20, "macro_f1": 0.66851}},
    }
    trainer.create_model_card(dataset_name="local", visualprocessbench=vpb)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| MMMU | 10 | 50.00 |\n| WeMath | 20 | 66.85 |\n| **Overall** | 30 | **61.23** |" in card
    model, processor = load_prm(args.output_dir)
    scores = score_steps(model, processor, train.select(range(2)).to_list(), batch_size=2)
    assert [len(s) for s in scores] == [1, 4] and all(0.0 <= v <= 1.0 for s in scores for v in s)
    # The reloaded model scores exactly as the trained one
    trained_scores = score_steps(trainer.model.eval(), processor, train.select(range(2)).to_list(), batch_size=2)
    np.testing.assert_allclose(sum(scores, []), sum(trained_scores, []), atol=1e-5)


def _one_step_gradients(assets, output_dir, batch_size, accumulation, num_rows=4):
    train = prm_dataset(assets["images"], num_rows=num_rows)
    args = tiny_config(
        output_dir,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        weight_decay=0.0,
        max_grad_norm=1e9,
        train_sampling_strategy="sequential",
    )
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=train)
    before = state_dict_cpu(trainer.model)
    trainer.train()
    after = state_dict_cpu(trainer.model)
    # plain SGD with lr 1: the update is minus the gradient
    gradients = {name: before[name] - after[name] for name in ("score.weight", "score.bias")}
    return trainer.state.log_history[0]["loss"], gradients


def test_gradient_accumulation_matches_a_full_batch(assets, tmp_path):
    loss_1x4, grads_1x4 = _one_step_gradients(assets, tmp_path / "a", batch_size=4, accumulation=1)
    loss_4x1, grads_4x1 = _one_step_gradients(assets, tmp_path / "b", batch_size=1, accumulation=4)
    assert loss_1x4 == pytest.approx(loss_4x1, rel=1e-4)
    for name in grads_1x4:
        assert grads_1x4[name].abs().sum() > 0
        torch.testing.assert_close(grads_1x4[name], grads_4x1[name], rtol=1e-4, atol=1e-6)


def test_resume_gives_the_same_final_weights(assets, tmp_path):
    train = prm_dataset(assets["images"], num_rows=8)

    def run(output_dir, resume=None):
        # cosine schedule with warmup: the scheduler and optimizer states must come back too
        schedule = {"lr_scheduler_type": "cosine", "warmup_steps": 1}
        args = tiny_config(output_dir, max_steps=4, save_strategy="steps", save_steps=2, **schedule)
        trainer = PRMTrainer(assets["model"], args=args, train_dataset=train)
        trainer.train(resume_from_checkpoint=resume)
        return state_dict_cpu(trainer.model)

    uninterrupted = run(tmp_path / "full")
    # checkpoint-2 of the uninterrupted run is exactly what a run interrupted after 2 steps leaves behind
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    initial = state_dict_cpu(load_prm(assets["model"])[0])
    assert not torch.equal(uninterrupted["score.weight"], initial["score.weight"])
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_group_by_length_adds_total_token_lengths(assets, tmp_path):
    from bis_prm.model.processing_prm import PRMCollator

    train = prm_dataset(assets["images"], num_rows=8)
    args = tiny_config(tmp_path, train_sampling_strategy="group_by_length", max_steps=1)
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=train)
    # the lengths are the tokens the model will see, image tokens included
    collator = PRMCollator(trainer.processing_class)
    expected = [int(collator([row])["attention_mask"].sum()) for row in train.to_list()]
    assert trainer.train_dataset["length"] == expected
    assert len(set(expected)) > 1
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("padding_free", [False, True])
def test_batch_rebalance_balances_total_tokens_and_packed_accumulation_matches_a_full_batch(
    assets, tmp_path, padding_free
):
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    from bis_prm.training.sampling import PackedBatchRebalanceSampler

    train = prm_dataset(assets["images"], num_rows=8)
    args = tiny_config(
        tmp_path,
        train_sampling_strategy="batch_rebalance",
        padding_free=padding_free,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_steps=1,
    )
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=train)
    sampler = trainer._get_train_sampler()
    assert type(sampler) is (PackedBatchRebalanceSampler if padding_free else BatchRebalanceSampler)
    # the lengths it balances are total tokens, image tokens included
    assert sampler.lengths == trainer.train_dataset["length"]
    # one optimizer step holds every rollout once, in 4 micro-batches
    micro_batches = list(sampler)
    assert len(micro_batches) == 4 and sorted(sum(micro_batches, [])) == list(range(8))
    if padding_free:
        # the first optimizer step of a packed run: the gradient of its 8 rollouts, as one full batch gives it
        before = state_dict_cpu(trainer.model)
        trainer.args.optim, trainer.args.learning_rate, trainer.args.weight_decay = "sgd", 1.0, 0.0
        trainer.args.max_grad_norm = 1e9
        trainer.train()
        rebalanced = before["score.weight"] - state_dict_cpu(trainer.model)["score.weight"]
        _, full = _one_step_gradients(assets, tmp_path / "full", batch_size=8, accumulation=1, num_rows=8)
        torch.testing.assert_close(rebalanced, full["score.weight"], rtol=1e-4, atol=1e-6)


def test_packed_rebalance_deals_equal_tokens_to_every_rank_and_slot():
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    from bis_prm.training.sampling import PackedBatchRebalanceSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(400, 3000, size=1024).tolist()
    ranks, accumulation = 8, 8

    def per_rank(sampler_class):
        return [list(sampler_class(lengths, 512, ranks, accumulation, rank=r)) for r in range(ranks)]

    packed, padded = per_rank(PackedBatchRebalanceSampler), per_rank(BatchRebalanceSampler)
    for step in range(2):
        slots = range(step * accumulation, (step + 1) * accumulation)
        # the same global batch as transformers' sampler, every rollout once
        ours = sorted(i for rank in packed for k in slots for i in rank[k])
        theirs = sorted(i for rank in padded for k in slots for i in rank[k])
        assert ours == theirs and len(set(ours)) == 512
    # every micro-batch slot: the slowest rank holds at most 3 % more tokens than the average
    for k in range(2 * accumulation):
        tokens = [sum(lengths[i] for i in rank[k]) for rank in packed]
        assert max(tokens) <= 1.03 * np.mean(tokens)


def test_soft_labels_and_field_names(assets, tmp_path):
    train = prm_dataset(assets["images"], num_rows=4).rename_columns({"steps": "solution", "mc_scores": "mc"})
    args = tiny_config(tmp_path, label_mode="soft", dataset_steps_field="solution", dataset_mc_scores_field="mc")
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=train, eval_dataset=train)
    assert trainer.train_dataset["labels"][1] == pytest.approx(train["mc"][1])
    # evaluation targets are always hard labels
    assert trainer.eval_dataset["labels"][1] == [1.0 if v > 0 else 0.0 for v in train["mc"][1]]
    assert "steps" in trainer.train_dataset.column_names


def test_hub_style_image_features(assets, tmp_path):
    """Subsets loaded from the Hub carry `List(Image())` columns: no path checks, images reach the processor."""
    from datasets import Image, List

    train = prm_dataset(assets["images"], num_rows=4).cast_column("image", List(Image()))
    args = tiny_config(tmp_path, image_root="/elsewhere", train_sampling_strategy="sequential")
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=train)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape[0] > 0 and (batch["labels"] != -100).sum() == sum(
        len(steps) for steps in train["steps"][:2]
    )


def test_liger_kernels_go_into_the_backbone_without_the_lm_head_loss(assets, tmp_path, monkeypatch):
    import bis_prm.training.prm_trainer as prm_trainer

    calls = []
    monkeypatch.setattr(prm_trainer, "apply_liger_kernel", lambda model, config: calls.append((model, config)))
    args = tiny_config(tmp_path, use_liger_kernel=True, liger_kernel_config={"rope": False})
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=prm_dataset(assets["images"]))
    [(model, config)] = calls
    assert model is trainer.model.model and type(model).__name__ == "Qwen2_5_VLModel"
    assert config == {"rope": False, "fused_linear_cross_entropy": False}
    assert not trainer.args.use_liger_kernel  # the Trainer does not patch the PRM class a second time


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger's Triton kernels need a GPU")
def test_training_with_liger_kernels_on_a_gpu(assets, tmp_path):
    pytest.importorskip("liger_kernel")
    args = tiny_config(tmp_path, use_liger_kernel=True, max_steps=2, bf16=True)
    trainer = PRMTrainer(assets["model"], args=args, train_dataset=prm_dataset(assets["images"]))
    trainer.train()
    assert trainer.state.global_step == 2
