import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl import ModelConfig, TrlParser

from bis_prm.data.selection import build_subset
from bis_prm.model.inference import score_steps
from bis_prm.model.modeling_prm import load_prm
from bis_prm.training.dataset import prepare_prm_dataset
from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.script import ScriptArguments, load_prm_datasets, main, parse_recipe
from tests.utils import REPO_ROOT, prm_dataset, tiny_base, write_images, write_raw_corpus


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    model = str(tiny_base("qwen2_5_vl", tmp_path_factory))
    return {"root": root, "model": model, "images": write_images(root / "images")}


def test_load_from_file_and_from_disk_with_eval_split(assets, tmp_path):
    dataset = prm_dataset(assets["images"], num_rows=8)
    dataset.to_json(tmp_path / "subset.jsonl")
    train, eval_, report = load_prm_datasets(ScriptArguments(str(tmp_path / "subset.jsonl"), eval_ratio=0.25))
    assert (len(train), len(eval_), report) == (6, 2, None)
    assert sorted([*train["question"], *eval_["question"]]) == sorted(dataset["question"])

    dataset.train_test_split(test_size=3, shuffle=False).save_to_disk(tmp_path / "saved")
    train, eval_, _ = load_prm_datasets(ScriptArguments(str(tmp_path / "saved"), dataset_test_split="test"))
    assert (len(train), len(eval_)) == (5, 3)
    assert list(eval_["question"]) == list(dataset["question"])[5:]
    with pytest.raises(ValueError, match="has no split 'validation'"):
        load_prm_datasets(ScriptArguments(str(tmp_path / "saved"), dataset_test_split="validation"))


def test_selection_on_the_fly_equals_build_subset(assets, tmp_path):
    corpus = write_raw_corpus(tmp_path / "corpus")
    selection = {"method": "bis", "ratio": 0.5, "alpha": 0.2}
    train, eval_, report = load_prm_datasets(ScriptArguments(str(corpus), selection=selection))
    expected, expected_report = build_subset(str(corpus), **selection)
    assert eval_ is None and train.to_list() == expected.to_list()
    assert report["total"]["kept"] == expected_report["total"]["kept"] == 6


def test_selection_from_a_hub_corpus_downloads_its_images(assets, tmp_path, monkeypatch):
    """Training reads the images, so selecting from a Hub repo id on the fly also downloads its images.zip."""
    corpus = write_raw_corpus(tmp_path / "corpus")
    asked = []

    def fake_resolve(path_or_repo, revision=None, download_images=False):
        asked.append((path_or_repo, download_images))
        return corpus / "annotations", corpus

    monkeypatch.setattr("bis_prm.data.selection.resolve_visualprm400k", fake_resolve)
    selection = {"method": "bis", "ratio": 0.5, "alpha": 0.2}
    train, _, _ = load_prm_datasets(ScriptArguments("OpenGVLab/VisualPRM400K-v1.1-Raw", selection=selection))
    assert asked == [("OpenGVLab/VisualPRM400K-v1.1-Raw", True)] and len(train) == 6


def test_main_trains_saves_and_writes_the_model_card(assets, tmp_path):
    corpus = write_raw_corpus(tmp_path / "corpus")
    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"model_name_or_path: {assets['model']}\n"
        f"dataset_name: {corpus}\n"
        "selection:\n  method: bis\n  ratio: 1.0\n  alpha: 0.05\n"
        "eval_ratio: 0.25\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "bf16: false\nactivation_checkpointing: false\nlearning_rate: 1.0e-03\n"
        "max_steps: 3\nper_device_train_batch_size: 2\nlogging_steps: 1\nsave_strategy: 'no'\n"
        "disable_tqdm: true\nmax_length: 512\n"
    )
    parser = TrlParser((ScriptArguments, PRMConfig, ModelConfig))
    metrics = main(*parser.parse_args_and_config(["--config", str(config), "--head", "linear"]))
    assert {"train_loss", "eval_loss", "eval_step_accuracy", "eval_f1_positive", "eval_f1_negative"} <= set(metrics)

    out = tmp_path / "out"
    card = (out / "README.md").read_text()
    assert "method `bis`, ratio `1.0`, alpha\n  `0.05`" in card and "Kept 12 of 12 rollouts" in card
    assert f"| eval_step_accuracy | {metrics['eval_step_accuracy']:.4f} |" in card
    assert "| head | linear |" in card and "arXiv 2602.04145" not in card  # the citation is BibTeX
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] == pytest.approx(metrics["eval_loss"])
    model, processor = load_prm(out)
    assert model.config.prm_head == "linear"
    scores = score_steps(model, processor, prm_dataset(assets["images"], num_rows=2).to_list())
    assert [len(s) for s in scores] == [1, 4]


def _launch(
    args: list[str], cwd: Path, timeout: int = 1200, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "accelerate.commands.launch", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _tiny_recipe_workdir(tmp_path: Path, model: str) -> Path:
    """A working directory laid out as the tiny recipe expects (`data/sample`, `data/tiny-qwen2_5_vl`)."""
    from bis_prm.data.sample import make_sample

    (tmp_path / "data").mkdir()
    make_sample(tmp_path / "data" / "sample")
    (tmp_path / "data" / "tiny-qwen2_5_vl").symlink_to(model)
    (tmp_path / "recipes").symlink_to(REPO_ROOT / "recipes")
    return tmp_path


@pytest.mark.slow
def test_zero3_two_processes_on_the_tiny_recipe(assets, tmp_path):
    """The issue's command: ZeRO-3, 2 CPU processes, tiny recipe; loss goes down and the output loads."""
    workdir = _tiny_recipe_workdir(tmp_path, assets["model"])
    result = _launch(
        [
            "--config_file",
            "recipes/accelerate_configs/zero3.yaml",
            "--num_processes",
            "2",
            "recipes/train.py",
            "--config",
            "recipes/tiny/config_sample.yaml",
            "--max_steps",  # a reduced run: the full recipe's 1 500 steps take minutes under ZeRO-3 on CPU
            "150",
        ],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    out = workdir / "data" / "tiny-qwen2_5_vl-PRM-sample"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0]
    model, processor = load_prm(out)
    scores = score_steps(model, processor, prm_dataset(write_images(tmp_path / "img"), num_rows=2).to_list())
    assert [len(s) for s in scores] == [1, 4]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ddp", "zero3"])
def test_resume_matches_an_uninterrupted_run(assets, tmp_path, launcher):
    """2 CPU processes (DDP or ZeRO-3): resuming from the step-2 checkpoint gives the uninterrupted run's weights."""
    workdir = _tiny_recipe_workdir(tmp_path, assets["model"])
    common = ["--config_file", f"recipes/accelerate_configs/{launcher}.yaml", "--num_processes", "2"]
    recipe = [
        "recipes/train.py",
        "--config",
        "recipes/tiny/config_sample.yaml",
        "--save_steps",
        "2",
    ]
    # The uninterrupted run leaves checkpoint-2 behind: exactly the state of a run interrupted after 2 steps
    result = _launch([*common, *recipe, "--output_dir", "data/full", "--max_steps", "4"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    resume = ["--max_steps", "4", "--resume_from_checkpoint", "data/full/checkpoint-2"]
    result = _launch([*common, *recipe, "--output_dir", "data/resumed", *resume], cwd=workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    full, _ = load_prm(workdir / "data" / "full")
    resumed, _ = load_prm(workdir / "data" / "resumed")
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def _equality_run(assets, tmp_path: Path) -> tuple[list[str], dict, torch.nn.Module]:
    """The recipe of the equality tests (deterministic SGD on 8 rollouts, 2 steps) and the weights one process trains
    with a global batch of 4; returns the training command, its environment and that process's PRM."""
    from datasets import Dataset

    rows = prm_dataset(assets["images"], num_rows=8).to_list()
    Dataset.from_list(rows).to_parquet(tmp_path / "subset.parquet")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {assets['model']}\ndataset_name: {tmp_path / 'subset.parquet'}\nhead: linear\n"
        "bf16: false\nactivation_checkpointing: false\noptim: sgd\nlearning_rate: 0.5\nweight_decay: 0.0\n"
        "warmup_steps: 0\nlr_scheduler_type: constant\nmax_grad_norm: 1.0e9\nmax_steps: 2\nlogging_steps: 1\n"
        "save_strategy: 'no'\nreport_to: none\ntrain_sampling_strategy: sequential\nseed: 0\nmax_length: 512\n"
    )
    train = [str(REPO_ROOT / "recipes" / "train.py"), "--config", str(recipe)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, *train, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "single")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-5000:]
    one, _ = load_prm(tmp_path / "single")
    base, _ = load_prm(assets["model"], head="linear")
    assert not torch.equal(one.score.weight, base.score.weight)
    return train, env, one


def _assert_same_weights(one: torch.nn.Module, path: Path, what: str) -> None:
    two, _ = load_prm(path)
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=f"{what}: {name}")


def test_ddp_and_zero3_match_one_process_with_the_same_global_batch(assets, tmp_path):
    """One global batch of 4 rollouts: 1 process x 4, DDP 2 processes x (1 x 2 accumulation steps), ZeRO-3 likewise.
    The loss is normalised by the labelled steps of all micro-batches and processes, so the trained weights agree."""
    train, _, one = _equality_run(assets, tmp_path)
    for launcher in ("ddp", "zero3"):
        config = ["--config_file", str(REPO_ROOT / "recipes" / "accelerate_configs" / f"{launcher}.yaml")]
        per_process = ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2"]
        result = _launch([*config, "--num_processes", "2", *train, *per_process, "--output_dir", launcher], tmp_path)
        assert result.returncode == 0, result.stderr[-5000:]
        _assert_same_weights(one, tmp_path / launcher, launcher)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# slow: three training launches (one process, then two concurrent nodes), each importing torch and DeepSpeed
@pytest.mark.slow
def test_two_nodes_match_one_process_with_the_same_global_batch(assets, tmp_path):
    """The multi-node launch of recipes/accelerate_configs/multi_node_zero3.yaml as 2 "nodes" x 1 process on this
    machine (two `accelerate launch` with their `--machine_rank`, a loopback rendezvous): ZeRO-3 over both nodes,
    1 rollout x 2 accumulation steps each, trains the weights of one process with the global batch of 4."""
    train, env, one = _equality_run(assets, tmp_path)
    port = str(_free_port())
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    launch += ["--config_file", str(REPO_ROOT / "recipes" / "accelerate_configs" / "multi_node_zero3.yaml")]
    launch += ["--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1"]
    launch += ["--main_process_port", port]
    per_process = ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2"]
    nodes = [
        subprocess.Popen(
            [*launch, "--machine_rank", str(rank), *train, *per_process, "--output_dir", "two_nodes"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for rank, (node, output) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{output[-5000:]}"
    # one world of 2 processes over both launches (the model card records the world size)
    assert "| world_size | 2 |" in (tmp_path / "two_nodes" / "README.md").read_text()
    _assert_same_weights(one, tmp_path / "two_nodes", "2 nodes")


def test_peft_config_is_token_classification_on_the_language_model():
    from bis_prm.training.script import get_prm_peft_config

    assert get_prm_peft_config(ModelConfig()) is None
    config = get_prm_peft_config(ModelConfig(use_peft=True, lora_r=8, lora_task_type="CAUSAL_LM"))
    assert (config.task_type, config.r) == ("TOKEN_CLS", 8)
    assert "score" in config.modules_to_save
    # the language model's projections (of a VLM or a text LM), not the vision encoder's
    on = ["model.language_model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj"]
    off = ["model.visual.blocks.0.mlp.gate_proj", "model.vision_tower.encoder.layer.0.attention.q_proj", "score"]
    assert [bool(re.fullmatch(config.target_modules, name)) for name in on + off] == [True, True, False, False, False]
    custom = get_prm_peft_config(ModelConfig(use_peft=True, lora_target_modules=["q_proj"]))
    assert custom.target_modules in ("q_proj", {"q_proj"})  # ModelConfig unwraps a one-item list


def test_a_subset_moves_with_its_corpus(assets, tmp_path):
    """A subset written by `bis-prm select` records its image root relative to itself: copy both elsewhere and
    training finds the images there."""
    import shutil

    from bis_prm.cli import main as cli

    corpus = write_raw_corpus(tmp_path / "machine_a" / "corpus")
    subset = tmp_path / "machine_a" / "subsets" / "bis.parquet"
    assert cli(["select", "--annotations-dir", str(corpus), "--ratio", "0.5", "--output", str(subset)]) == 0
    shutil.copytree(tmp_path / "machine_a", tmp_path / "machine_b")
    shutil.rmtree(tmp_path / "machine_a")
    train, _, report = load_prm_datasets(ScriptArguments(str(tmp_path / "machine_b" / "subsets" / "bis.parquet")))
    assert set(train["image_root"]) == {str(tmp_path / "machine_b" / "subsets" / ".." / "corpus")}
    assert report["params"]["ratio"] == 0.5 and report["total"]["kept"] == len(train) == 6
    prepared, check = prepare_prm_dataset(train, PRMConfig(str(tmp_path / "out")))
    assert check.num_dropped() == 0
    assert all(os.path.isfile(path) and "machine_b" in path for paths in prepared["image"] for path in paths)


def test_a_subset_edited_in_place_is_read_anew(assets, tmp_path):
    """The `datasets` cache of a local subset is keyed on its content, not on its path and modification time."""
    path = tmp_path / "subset.jsonl"
    prm_dataset(assets["images"], num_rows=4).to_json(path)
    stat = path.stat()
    first, _, _ = load_prm_datasets(ScriptArguments(str(path)))
    edited = prm_dataset(assets["images"], num_rows=4).map(lambda row: {"question": row["question"] + " (edited)"})
    edited.to_json(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same modification time as before
    second, _, _ = load_prm_datasets(ScriptArguments(str(path)))
    assert all(q.endswith("(edited)") for q in second["question"]) and not any(
        "edited" in q for q in first["question"]
    )


def test_training_on_a_subset_with_a_corrupt_image_finishes_and_reports_it(assets, tmp_path, caplog):
    rows = prm_dataset(assets["images"], num_rows=8).to_list()
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows[3]["image"] = [str(tmp_path / "corrupt.png")]
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(tmp_path / "subset.parquet")
    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"model_name_or_path: {assets['model']}\ndataset_name: {tmp_path / 'subset.parquet'}\n"
        f"output_dir: {tmp_path / 'out'}\nhead: linear\nbf16: false\nactivation_checkpointing: false\n"
        "max_steps: 2\nper_device_train_batch_size: 2\nlogging_steps: 1\nsave_strategy: 'no'\n"
        "disable_tqdm: true\nmax_length: 512\nreport_to: none\n"
    )
    with caplog.at_level("WARNING"):
        main(*parse_recipe(["--config", str(config)]))
    assert "1 of 8 rows of the train dataset dropped (image_unreadable: 1)" in caplog.text
    assert f"row 3: image_unreadable: image '{tmp_path / 'corrupt.png'}' cannot be read" in caplog.text
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Rows left out of training: train: image_unreadable: 1 (dropped before training)." in card


@pytest.mark.slow
def test_two_processes_on_a_zipped_corpus_with_an_empty_cache(assets, tmp_path):
    """DDP on 2 CPU processes, selecting on the fly from a zipped corpus that no process has extracted yet."""
    import zipfile

    workdir = _tiny_recipe_workdir(tmp_path, assets["model"])
    sample = workdir / "data" / "sample" / "corpus"
    with zipfile.ZipFile(workdir / "data" / "corpus.zip", "w") as zf:
        for path in sorted(sample.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(sample))
    env_cache = tmp_path / "hf_cache"
    args = ["--config_file", "recipes/accelerate_configs/ddp.yaml", "--num_processes", "2", "recipes/train.py"]
    args += ["--config", "recipes/tiny/config_sample.yaml", "--dataset_name", "data/corpus.zip", "--max_steps", "4"]
    args += ["--output_dir", "data/zipped"]
    result = _launch(args, cwd=workdir, extra_env={"HF_DATASETS_CACHE": str(env_cache)})
    assert result.returncode == 0, result.stderr[-5000:]
    extracted = [p for p in (env_cache / "bis_prm" / "visualprm400k").iterdir() if p.is_dir()]
    assert len(extracted) == 1 and (extracted[0] / ".extracted").is_file()
    assert json.loads((workdir / "data" / "zipped" / "trainer_state.json").read_text())["global_step"] == 4


def test_packed_training_learns_like_padded_training(assets, tmp_path):
    """The tiny recipe on the sample, 200 steps padded and packed (`padding_free`): the same start, the same progress
    (the two runs differ by float rounding, which Adam amplifies over many steps)."""
    workdir = _tiny_recipe_workdir(tmp_path, assets["model"])
    histories = {}
    for padding_free in ("false", "true"):
        output = workdir / "data" / f"packed_{padding_free}"
        overrides = ["--padding_free", padding_free, "--max_steps", "200", "--logging_steps", "20"]
        overrides += ["--output_dir", str(output), "--eval_ratio", "0", "--disable_tqdm", "true"]
        recipe = ["--config", str(workdir / "recipes" / "tiny" / "config_sample.yaml"), *overrides]
        cwd = os.getcwd()
        os.chdir(workdir)  # the recipe's paths are relative to where it runs
        try:
            main(*parse_recipe(recipe))
        finally:
            os.chdir(cwd)
        history = json.loads((output / "trainer_state.json").read_text())["log_history"]
        histories[padding_free] = [entry["loss"] for entry in history if "loss" in entry]
    padded, packed = histories["false"], histories["true"]
    assert len(padded) == len(packed) == 10
    assert packed[:2] == pytest.approx(padded[:2], rel=1e-3)
    final_padded, final_packed = sum(padded[-3:]) / 3, sum(packed[-3:]) / 3
    assert final_padded < 0.9 * padded[0] and final_packed < 0.9 * packed[0]
    assert final_packed == pytest.approx(final_padded, rel=0.05)


def test_bis_prm_train_runs_a_recipe_and_refuses_a_missing_one(assets, tmp_path, capsys):
    from bis_prm.cli import main as cli

    Dataset = pytest.importorskip("datasets").Dataset
    Dataset.from_list(prm_dataset(assets["images"], num_rows=4).to_list()).to_parquet(tmp_path / "subset.parquet")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {assets['model']}\ndataset_name: {tmp_path / 'subset.parquet'}\nhead: linear\n"
        "bf16: false\nactivation_checkpointing: false\nmax_steps: 5\nsave_strategy: 'no'\nreport_to: none\n"
    )
    assert cli(["train", "--config", str(recipe), "--max_steps", "2", "--output_dir", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 2  # the override won
    assert cli(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "bis-prm train: error: recipe" in capsys.readouterr().err
