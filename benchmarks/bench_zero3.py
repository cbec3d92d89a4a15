"""PRM creation and training under DeepSpeed ZeRO-3 on 2 CPU processes, with a ~150M-parameter Qwen2.5-VL-shaped model.

    python -m benchmarks.bench_zero3                        # from the repository root
    python -m benchmarks.bench_zero3 --steps 3 --workdir /tmp/bench_zero3

1. **Memory while loading.** Each process creates the PRM from the base checkpoint with `load_prm` (the trainer's
   path): under ZeRO-3 the model is built inside `zero.Init`, so a process should hold its shard, not the whole model.
   A thread samples the process's resident memory every 5 ms; the script prints, per rank, the peak growth during
   loading (its own allocations, and the pages of the memory-mapped checkpoint, which are page cache) next to the size
   of one full fp32 copy of the weights, and the same for one process without DeepSpeed.
2. **Same result as one process.** `recipes/train.py` trains the same PRM for `--steps` optimizer steps (SGD, one
   global batch of 4 rollouts): on one process (4 x 1), with DDP on 2 processes (1 x 2 accumulation steps each) and
   with ZeRO-3 on 2 processes (1 x 2). The script prints the largest difference of every trained weight to the
   one-process run (the tests' tolerance: `rtol=1e-4, atol=1e-6`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# ~150M parameters: a 12-layer, 1024-wide language model (head_dim 64: rope sections 8 + 12 + 12) and a small ViT
SHAPES = {
    "text_config": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 12,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 10000.0},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_heads": 4,
        "out_hidden_size": 1024,
    },
}


def resident_memory() -> dict[str, int]:
    """This process's resident memory in bytes: `anon` (its own allocations) and `file` (mapped files, such as a
    memory-mapped checkpoint: page cache, shared between processes and given back under pressure)."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, value, _ = line.split()
                fields[name[3:-1].lower()] = int(value) * 1024
    return fields


class PeakMemory:
    """Samples this process's resident memory in a thread; `peak` holds the largest `anon` and `file` seen."""

    def __init__(self, interval: float = 0.005):
        self.interval, self._running = interval, False

    def __enter__(self):
        self.before = resident_memory()
        self.peak = dict(self.before)
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self._update()
            time.sleep(self.interval)

    def _update(self):
        now = resident_memory()
        self.peak = {key: max(self.peak[key], now[key]) for key in now}

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self._update()


def measure_loading(base: str, output: Path) -> None:
    """Create the PRM from `base` as the trainer does and write this rank's memory figures to `output`."""
    import torch

    from bis_prm.model.modeling_prm import load_prm
    from bis_prm.training.prm_config import PRMConfig

    # registers the DeepSpeed config with transformers under `accelerate launch` (as the training script does)
    args = PRMConfig(output_dir=str(output.parent / "unused"), report_to="none")
    with PeakMemory() as memory:
        model, _ = load_prm(base, head="yes_no", dtype=torch.float32)
    full_copy = sum(4 * parameter.ds_numel if hasattr(parameter, "ds_numel") else 4 * parameter.numel()
                    for parameter in model.parameters())  # fmt: skip
    figures = {
        "rank": args.process_index,
        "processes": args.world_size,
        "zero3": hasattr(next(model.parameters()), "ds_numel"),
        "anon_before_mib": memory.before["anon"] / 2**20,
        "peak_anon_growth_mib": (memory.peak["anon"] - memory.before["anon"]) / 2**20,
        "peak_file_growth_mib": (memory.peak["file"] - memory.before["file"]) / 2**20,
        "full_fp32_copy_mib": full_copy / 2**20,
    }
    output.with_name(f"{output.stem}_rank{args.process_index}.json").write_text(json.dumps(figures))


def _run(command: list[str], workdir: Path, extra_env: dict | None = None) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")


def _launch(config: str | None) -> list[str]:
    if config is None:
        return [sys.executable]
    accelerate_config = str(REPO_ROOT / "recipes" / "accelerate_configs" / f"{config}.yaml")
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        accelerate_config,
        "--num_processes",
        "2",
    ]


def prepare(workdir: Path) -> tuple[str, str]:
    """The ~150M base checkpoint and a 16-rollout subset in the HF PRM format."""
    from datasets import Dataset
    from PIL import Image

    from bis_prm.testing import make_tiny_vlm

    base = workdir / "qwen2_5_vl_150m"
    if not (base / "config.json").is_file():
        make_tiny_vlm("qwen2_5_vl", base, shapes=SHAPES)
    images = workdir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = {"image": [], "image_root": [], "question": [], "steps": [], "labels": []}
    for i in range(16):
        Image.new("RGB", (56, 56), ((37 * i) % 256, (91 * i) % 256, 120)).save(images / f"{i}.png")
        steps = [f"Step {j}: the value is {i + j}." for j in range(1 + i % 4)]
        rows["image"].append([f"{i}.png"])
        rows["image_root"].append(str(images))
        rows["question"].append(f"What is shown in figure {i}?")
        rows["steps"].append(steps)
        rows["labels"].append([float((i + j) % 3 != 2) for j in range(len(steps))])
    Dataset.from_dict(rows).to_parquet(workdir / "subset.parquet")
    return str(base), str(workdir / "subset.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bis_prm_bench_zero3"))
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps of the equality runs.")
    parser.add_argument("--memory-only", action="store_true", help="Skip the training runs.")
    parser.add_argument("--measure-loading", metavar="BASE", help=argparse.SUPPRESS)  # one launched process
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_loading:
        measure_loading(args.measure_loading, args.output)
        return

    import torch

    from bis_prm.model.modeling_prm import load_prm

    args.workdir.mkdir(parents=True, exist_ok=True)
    base, subset = prepare(args.workdir)
    me = ["-m", "benchmarks.bench_zero3", "--measure-loading", base]
    figures = {}
    # glibc keeps freed heap blocks for reuse, and only blocks above its mmap threshold (up to 32 MiB) go back to the
    # system when freed: every weight matrix of a 7B model is above it, most of this small model's are below. With the
    # threshold at 1 MiB, this model's memory behaves as a 7B model's would; both figures are printed.
    allocator_as_7b = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    measures = (
        ("zero3, 2 processes", "zero3", allocator_as_7b),
        ("zero3, 2 processes, default allocator", "zero3", None),
        ("one process, no DeepSpeed", None, allocator_as_7b),
    )
    for number, (name, config, extra_env) in enumerate(measures):
        output = args.workdir / f"loading{number}"
        module = me if config is None else ["--module", "benchmarks.bench_zero3", *me[2:]]
        _run([*_launch(config), *module, "--output", str(output)], REPO_ROOT, extra_env)
        figures[name] = [json.loads(p.read_text()) for p in sorted(args.workdir.glob(f"{output.name}_rank*.json"))]
    print("Memory while creating the PRM from the base checkpoint (MiB):")
    for name, ranks in figures.items():
        for rank in ranks:
            print(
                f"  {name}, rank {rank['rank']}: peak growth {rank['peak_anon_growth_mib']:.0f} allocated, "
                f"{rank['peak_file_growth_mib']:.0f} mapped from the checkpoint (one full fp32 copy: "
                f"{rank['full_fp32_copy_mib']:.0f}; zero.Init: {rank['zero3']})"
            )

    if args.memory_only:
        return
    recipe = args.workdir / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {base}\ndataset_name: {subset}\nhead: yes_no\nbf16: false\n"
        "activation_checkpointing: false\noptim: sgd\nlearning_rate: 0.05\nweight_decay: 0.0\nwarmup_steps: 0\n"
        f"lr_scheduler_type: constant\nmax_grad_norm: 1.0e9\nmax_steps: {args.steps}\nlogging_steps: 1\n"
        "save_strategy: 'no'\nreport_to: none\ntrain_sampling_strategy: sequential\nseed: 0\nmax_length: 512\n"
    )
    runs = {"one process 4 x 1": (None, 4, 1), "DDP 2 x (1 x 2)": ("ddp", 1, 2), "ZeRO-3 2 x (1 x 2)": ("zero3", 1, 2)}
    trained = {}
    for name, (config, batch, accumulation) in runs.items():
        output = args.workdir / name.split()[0].lower()
        command = [*_launch(config), str(REPO_ROOT / "recipes" / "train.py"), "--config", str(recipe)]
        command += ["--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation)]
        _run([*command, "--output_dir", str(output)], args.workdir)
        trained[name] = load_prm(output)[0].state_dict()
    reference = trained["one process 4 x 1"]
    initial = load_prm(base, head="yes_no")[0].state_dict()
    moved = max((reference[k] - initial[k]).abs().max().item() for k in reference)
    print(f"\nTrained weights after {args.steps} SGD steps (largest change from the start: {moved:.3g}):")
    for name, weights in trained.items():
        difference = max((weights[k] - reference[k]).abs().max().item() for k in reference)
        close = all(torch.allclose(weights[k], reference[k], rtol=1e-4, atol=1e-6) for k in reference)
        print(f"  {name}: largest difference to one process {difference:.3g}; equal within the tolerance: {close}")


if __name__ == "__main__":
    main()
