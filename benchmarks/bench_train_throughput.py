"""Training throughput of a PRM recipe: samples/s, tokens/s and, on a GPU, model FLOPs utilisation (MFU).

    # CPU: the tiny recipe (prepare data/sample and data/tiny-qwen2_5_vl as its header says)
    python benchmarks/bench_train_throughput.py --config recipes/tiny/config_sample.yaml --steps 10

    # GPU: a random-init Qwen2.5-VL-7B-shaped PRM (no download), synthetic 448x448 rollouts, LoRA on one GPU
    python benchmarks/bench_train_throughput.py --config recipes/qwen2_5_vl_7b/bis10.yaml --random-init-7b \
        --synthetic 512 --steps 20 --use_peft --lora_r 64 --per_device_train_batch_size 8

Arguments after the benchmark's own options are recipe overrides, as for `recipes/train.py`. The first
`--warmup-steps` optimizer steps are excluded from the timing.

FLOP counting (model FLOPs, so activation recomputation under gradient checkpointing is not counted):
- language model (every token, image tokens included; `N_lm` = its matmul parameters, input embeddings excluded,
  `score` head included): forward `2 * N_lm`, backward to the activations `2 * N_lm`, backward to the weights
  `2 * N_lm_trainable` FLOPs per token, i.e. the usual `6 * N` for full fine-tuning and `4 * N` plus the adapters for
  LoRA;
- frozen vision encoder: forward only, `2 * N_vit` FLOPs per patch;
- attention's sequence-quadratic term is left out (as in the PaLM definition of MFU), which understates MFU for
  long sequences.
MFU = model FLOPs per second / peak dense bf16 FLOP/s of the GPU (H100/H200 SXM: 989 TFLOP/s, A100: 312 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from transformers import TrainerCallback
from trl import ModelConfig, TrlParser

from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.prm_trainer import _VISION_TOWER_NAMES, PRMTrainer
from bis_prm.training.script import ScriptArguments, get_prm_peft_config, load_prm_datasets

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}

# Qwen2.5-VL-7B-Instruct's shapes (its config.json), for a random-init model of the real size
QWEN2_5_VL_7B_TEXT = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
}
QWEN2_5_VL_7B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}


class ThroughputCallback(TrainerCallback):
    """Times the optimizer steps after the first `warmup` ones; `InputCounter` counts what they process."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = None
        self.timed_steps = 0
        self.counting = False

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()
            self.counting = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.counting:
            self.timed_steps += 1

    def elapsed(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - self.start


class InputCounter:
    """Wraps `trainer.compute_loss` to count the samples, non-padding tokens and vision patches of timed steps."""

    def __init__(self, compute_loss, callback: ThroughputCallback, patch_size: int):
        self.compute_loss, self.callback, self.patch_size = compute_loss, callback, patch_size
        self.samples = self.tokens = self.patches = 0

    def __call__(self, model, inputs, *args, **kwargs):
        if self.callback.counting and model.training:
            self.samples += inputs["attention_mask"].shape[0]
            self.tokens += int(inputs["attention_mask"].sum())
            pixels = inputs.get("pixel_values")
            if pixels is not None:
                # Qwen2.5-VL flattens patches to rows; tiling processors give [tiles, 3, H, W]
                self.patches += pixels.shape[0] if pixels.dim() == 2 else pixels.numel() // (3 * self.patch_size**2)
        return self.compute_loss(model, inputs, *args, **kwargs)


def synthetic_rollouts(count: int, image_dir: Path, image_size: int, seed: int = 0) -> Dataset:
    """`count` rollouts of 6 steps with random `image_size` images, in the HF PRM format."""
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(8):
        path = image_dir / f"synthetic_{index}.png"
        Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    words = "the red bar is higher than the blue bar so we add the two values and compare them".split()
    rows = {"image": [], "question": [], "steps": [], "labels": []}
    for index in range(count):
        steps = [" ".join(rng.choice(words, size=30)) + "." for _ in range(6)]
        rows["image"].append([paths[index % len(paths)]])
        rows["question"].append(f"Question {index}: " + " ".join(rng.choice(words, size=20)) + "?")
        rows["steps"].append(steps)
        rows["labels"].append([float(value) for value in rng.integers(0, 2, size=len(steps))])
    return Dataset.from_dict(rows)


def random_init_7b(workdir: Path) -> str:
    """Write a random Qwen2.5-VL-7B-shaped base checkpoint (bf16) with the tiny offline processor; return its path."""
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from bis_prm.testing import make_tiny_vlm

    tiny = make_tiny_vlm("qwen2_5_vl", workdir / "tiny")
    config = AutoConfig.from_pretrained(tiny)
    for key, value in QWEN2_5_VL_7B_TEXT.items():
        setattr(config.text_config, key, value)
    for key, value in QWEN2_5_VL_7B_VISION.items():
        setattr(config.vision_config, key, value)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    path = workdir / "qwen2_5_vl_7b_random"
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(tiny).save_pretrained(path)
    del model
    return str(path)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    counts = {"lm": 0, "lm_trainable": 0, "vision": 0, "total": 0}
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, parameter in model.named_parameters():
        counts["total"] += parameter.numel()
        if id(parameter) in embeddings:
            continue
        if any(part in _VISION_TOWER_NAMES for part in name.split(".")):
            counts["vision"] += parameter.numel()
        else:
            counts["lm"] += parameter.numel()
            counts["lm_trainable"] += parameter.numel() if parameter.requires_grad else 0
    return counts


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="Recipe YAML.")
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps.")
    parser.add_argument("--warmup-steps", type=int, default=2, help="Untimed optimizer steps first.")
    parser.add_argument("--random-init-7b", action="store_true", help="Random Qwen2.5-VL-7B-shaped model (GPU).")
    parser.add_argument("--synthetic", type=int, default=0, help="Use N synthetic rollouts instead of the recipe's.")
    parser.add_argument("--image-size", type=int, default=448, help="Side of the synthetic images.")
    parser.add_argument("--output-json", help="Also write the figures to this file.")
    args, overrides = parser.parse_known_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_train_"))
    recipe = TrlParser((ScriptArguments, PRMConfig, ModelConfig))
    script_args, training_args, model_args = recipe.parse_args_and_config(
        [
            "--config",
            args.config,
            "--output_dir",
            str(workdir / "out"),
            "--max_steps",
            str(args.warmup_steps + args.steps),
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            *overrides,
        ]
    )
    if args.synthetic:
        train_dataset = synthetic_rollouts(args.synthetic, workdir / "images", args.image_size)
    else:
        train_dataset, _, _ = load_prm_datasets(script_args, seed=training_args.seed)
    model_name = random_init_7b(workdir) if args.random_init_7b else model_args.model_name_or_path
    if model_args.dtype is not None:
        training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), "dtype": model_args.dtype}
    peft_config = get_prm_peft_config(model_args)

    callback = ThroughputCallback(args.warmup_steps)
    trainer = PRMTrainer(model_name, args=training_args, train_dataset=train_dataset, peft_config=peft_config)
    patch_size = getattr(getattr(trainer.model.config, "vision_config", None), "patch_size", 14)
    counter = InputCounter(trainer.compute_loss, callback, patch_size)
    trainer.compute_loss = counter
    trainer.add_callback(callback)
    trainer.train()
    elapsed = callback.elapsed()

    counts = parameter_counts(trainer.model)
    flops = counter.tokens * (4 * counts["lm"] + 2 * counts["lm_trainable"]) + counter.patches * 2 * counts["vision"]
    peak = peak_flops()
    figures = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "model": "random-init Qwen2.5-VL-7B-shaped" if args.random_init_7b else model_name,
        "parameters": counts,
        "timed_steps": callback.timed_steps,
        "seconds": round(elapsed, 3),
        "samples_per_second": round(counter.samples / elapsed, 3),
        "tokens_per_second": round(counter.tokens / elapsed, 1),
        "model_tflops_per_second": round(flops / elapsed / 1e12, 3),
        "mfu": round(flops / elapsed / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }
    print(json.dumps(figures, indent=2))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
