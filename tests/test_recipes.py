"""The shipped recipes: every one parses into the training arguments, the InternVL2.5-8B ones carry the reference's
settings, and the SLURM script launches every node with the arguments that keep the global batch."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from bis_prm.training.script import parse_recipe
from tests.utils import REPO_ROOT

RECIPES = REPO_ROOT / "recipes"
# PRM training recipes; recipes/grpo/ trains a policy (tests/test_rewards.py runs its tiny recipe)
TRAINING_RECIPES = sorted(
    path for path in RECIPES.glob("*/*.yaml") if path.parent.name not in ("accelerate_configs", "grpo")
)
PAPER_RECIPES = [path for path in TRAINING_RECIPES if path.parent.name != "tiny"]


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recipe_parses(recipe, tmp_path):
    # bf16 needs a GPU to be parsed; every key must be a field of the three argument groups
    script_args, args, model_args = parse_recipe(
        ["--config", str(recipe), "--bf16", "false", "--output_dir", str(tmp_path)]
    )
    assert model_args.model_name_or_path and script_args.dataset_name
    assert args.prompt_format == yaml.safe_load(recipe.read_text()).get("prompt_format", "bis_prm")


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_paper_recipes_state_the_paper_settings(recipe):
    config = yaml.safe_load(recipe.read_text())
    assert "prompt_format" in config  # stated, not left to the default
    assert (config["learning_rate"], config["num_train_epochs"], config["freeze_vision_tower"]) == (1e-5, 1, True)
    assert config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] * 8 == 512
    if recipe.parent.name == "internvl2_5_8b":
        assert config["prompt_format"] == "bis_reference"
        assert (config["max_tiles"], config["max_length"], config["head"]) == (6, 8192, "yes_no")
        assert config["model_name_or_path"] == "InternVL2_5-8B-hf"  # the output of bis-prm convert-internvl


@pytest.mark.parametrize("recipe", sorted((RECIPES / "grpo").glob("*.yaml")), ids=lambda path: path.name)
def test_every_grpo_recipe_parses_into_its_scripts_arguments(recipe, tmp_path, monkeypatch):
    import importlib.util
    import sys

    from trl import GRPOConfig, ModelConfig, TrlParser

    spec = importlib.util.spec_from_file_location("grpo_recipe", RECIPES / "grpo" / "grpo.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "grpo_recipe", script)  # dataclasses look their module up there
    spec.loader.exec_module(script)
    parser = TrlParser((script.GRPOScriptArguments, GRPOConfig, ModelConfig))
    script_args, args, model_args = parser.parse_args_and_config(
        ["--config", str(recipe), "--bf16", "false", "--output_dir", str(tmp_path)]
    )
    assert model_args.model_name_or_path and script_args.dataset_name
    assert (script_args.prm_model is None) != (script_args.prm_url is None)  # a PRM in-process or a server
    assert args.num_generations >= 2 and script_args.prm_aggregation in ("min", "mean", "last", "prod")


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_the_slurm_script_launches_every_node_with_its_rank(tmp_path):
    """SLURM's `scontrol` and `srun` stubbed: the script's `srun` command, run as node 1, starts `accelerate launch`
    with the node's rank, the first node as rendezvous, the world size and accumulation steps of a global batch of
    512 on 2 x 8 GPUs, and the recipe overrides as given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "scontrol", "printf 'node-a\\nnode-b\\n'")
    _stub(bin_dir, "srun", 'printf "%s" "${@: -1}" > "$CAPTURE"')  # the command srun runs on every node
    _stub(bin_dir, "accelerate", 'printf "%s\\n" "$@" > "$CAPTURE.args"')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CAPTURE": str(tmp_path / "command"),
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_ID": "7",
    }
    script = [str(RECIPES / "slurm" / "train.slurm"), "internvl2_5_8b/bis10.yaml", "--hub_model_id", "a b"]
    result = subprocess.run(["bash", *script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    node = subprocess.run(
        ["bash", "-c", (tmp_path / "command").read_text()], env={**env, "SLURM_PROCID": "1"}, timeout=60
    )
    assert node.returncode == 0
    args = (tmp_path / "command.args").read_text().splitlines()
    end = args.index("recipes/train.py")
    options = dict(zip(args[1:end:2], args[2:end:2], strict=True))
    assert args[0] == "launch" and options == {
        "--config_file": "recipes/accelerate_configs/multi_node_zero3.yaml",
        "--num_machines": "2",
        "--num_processes": "16",
        "--machine_rank": "1",
        "--main_process_ip": "node-a",
        "--main_process_port": "29500",
    }
    assert args[end:] == [
        "recipes/train.py",
        "--config",
        "recipes/internvl2_5_8b/bis10.yaml",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "8",  # 512 = 16 GPUs x 4 x 8
        "--hub_model_id",
        "a b",
    ]

    # 3 nodes cannot hold 512 rollouts in whole accumulation steps of 4 per GPU: refused before anything starts
    result = subprocess.run(
        ["bash", *script], cwd=REPO_ROOT, env={**env, "SLURM_NNODES": "3"}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "A global batch of 512 is not 24 GPUs x 4 rollouts" in result.stderr
