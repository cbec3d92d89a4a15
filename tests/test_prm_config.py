import argparse
import re

import pytest
from transformers import TrainingArguments
from trl import ModelConfig, TrlParser

from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.script import ScriptArguments


def test_defaults_follow_the_paper(tmp_path):
    args = PRMConfig(output_dir=str(tmp_path))
    assert args.learning_rate == 1e-5
    assert args.weight_decay == 0.05
    assert args.warmup_steps == 0.05
    assert args.lr_scheduler_type == "cosine"
    assert args.num_train_epochs == 1
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True  # the alias mirrors it
    assert args.remove_unused_columns is False
    assert (args.head, args.step_token, args.label_mode) == ("yes_no", "<prm>", "hard")
    assert args.freeze_vision_tower is True
    assert args.max_length == 4096
    # The defaults really differ from TrainingArguments', i.e. they are ours
    base = TrainingArguments(output_dir=str(tmp_path))
    assert (base.learning_rate, base.weight_decay, base.lr_scheduler_type) != (1e-5, 0.05, "cosine")


def test_bf16_defaults_to_the_hardware(tmp_path):
    import torch

    args = PRMConfig(output_dir=str(tmp_path))
    # CPU-only machines fall back to fp32 instead of TrainingArguments' "doesn't support bf16" error
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert PRMConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is False
    assert PRMConfig(output_dir=str(tmp_path), bf16=False).bf16 is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head": "mlp"}, "`head` must be 'yes_no' or 'linear'"),
        ({"label_mode": "fuzzy"}, "`label_mode` must be 'hard' or 'soft'"),
        ({"max_length": 0}, "`max_length` must be positive"),
    ],
)
def test_invalid_values_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PRMConfig(output_dir=str(tmp_path), **kwargs)


def test_yaml_config_with_cli_overrides(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(
        "model_name_or_path: some/model\n"
        "dataset_name: data/sample/corpus\n"
        "selection:\n  method: bis\n  ratio: 0.1\n  alpha: 0.2\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "label_mode: soft\n"
        "learning_rate: 2.0e-05\n"
        "bf16: false\n"
    )
    parser = TrlParser((ScriptArguments, PRMConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        ["--config", str(config), "--learning_rate", "3e-5", "--head", "linear"]
    )
    assert script_args.selection == {"method": "bis", "ratio": 0.1, "alpha": 0.2}
    assert training_args.learning_rate == 3e-5  # the command line wins over the file
    assert training_args.label_mode == "soft"
    assert training_args.head == "linear"
    assert model_args.model_name_or_path == "some/model"


def test_selection_from_the_command_line_is_json(tmp_path):
    args = ScriptArguments("corpus", selection='{"method": "bis", "ratio": 0.25, "alpha": 0.05}')
    assert args.selection == {"method": "bis", "ratio": 0.25, "alpha": 0.05}
    with pytest.raises(ValueError, match=r"unknown keys \['topk'\]"):
        ScriptArguments("corpus", selection={"method": "bis", "topk": 3})


@pytest.mark.skipif(__import__("torch").accelerator.is_available(), reason="CPU-only launch defaults")
def test_cpu_only_launches_get_a_process_group(tmp_path, monkeypatch):
    # Plain `python recipes/train.py`: nothing changes
    args = PRMConfig(output_dir=str(tmp_path))
    assert (args.ddp_backend, args.use_cpu) == (None, False)
    # Fields as an `accelerate launch` process sees them, checked before TrainingArguments sets up the devices
    from bis_prm.training.prm_config import _set_cpu_distributed_defaults

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    deepspeed = argparse.Namespace(use_cpu=False, ddp_backend=None)
    _set_cpu_distributed_defaults(deepspeed)
    assert (deepspeed.ddp_backend, deepspeed.use_cpu) == ("gloo", False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    ddp = argparse.Namespace(use_cpu=False, ddp_backend=None)
    _set_cpu_distributed_defaults(ddp)
    assert (ddp.ddp_backend, ddp.use_cpu) == (None, True)
