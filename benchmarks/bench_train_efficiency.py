"""How much of a PRM training step is useful work: padded vs grouped vs packed batches, and data loading off the
critical path.

    python -m benchmarks.bench_train_efficiency                  # CPU: figures 1-3 (about 10 minutes on 2 cores)
    python -m benchmarks.bench_train_efficiency --rollouts 256 --timed-steps 3     # a quicker look
    python -m benchmarks.bench_train_efficiency --mfu            # GPU: also figure 4

The corpus is generated: `--rollouts` rollouts in the HF PRM format, each with one image whose sides are drawn
uniformly in 300-1,500 px and 3-15 steps of 8-50 words, so that rollout lengths spread as in VisualPRM400K. Lengths
are total tokens as the trainer counts them (`PRMTrainer` adds them as the `length` column: text tokens plus image
tokens, image sizes read from the file headers) with the real `max_pixels` of the recipes (1,003,520: up to 1,280
tokens per image). Batchings, with the recipes' 8 rollouts per micro-batch and 8 accumulation steps:

- padded: random order, each micro-batch padded to its longest rollout (v0.1);
- grouped: `train_sampling_strategy: group_by_length` (transformers' `LengthGroupedSampler` on total tokens);
- rebalanced: `train_sampling_strategy: batch_rebalance` (transformers' `BatchRebalanceSampler`: micro-batches of
  similar cost on every rank, a variable number of rollouts each, still 512 per optimizer step);
- packed: `padding_free: true` (each micro-batch one row, no padding), random order;
- packed + rebalanced: the recipes' setting.

Figures:

1. Structure (exact, any machine): the fraction of computed tokens that are not padding on one rank, and the useful
   fraction with 8 ranks waiting on the slowest at every micro-batch (ZeRO-3 gathers parameters layer by layer, so
   ranks meet at every forward and backward): `useful tokens / (ranks x sum over micro-batch slots of the slowest
   rank's computed tokens)`. Computed tokens of a micro-batch: rollouts x longest rollout when padded, the sum of
   its rollouts when packed. Goal: at least 0.95 packed.
2. Useful tokens/s of `PRMTrainer` steps relative to padded, measured here on a small random Qwen2.5-VL (fp32).
   transformers runs a packed row through `sdpa` with a dense block-diagonal mask (exact, but quadratic in the
   row's total length), where a GPU runs `flash_attention_2` varlen, quadratic in each rollout's length only. So
   the packed runs are timed twice: with that dense mask, and with `per_rollout_sdpa`, an attention function
   registered here that runs `sdpa` on each rollout of the row, as varlen attention does (its logits equal the
   dense mask's: the figure gives the largest difference). The second is the one that carries to a GPU, though it
   overstates the gain a little: a CPU's unmasked causal `sdpa` kernel is also faster than its masked one, which
   the padded batches need.
3. The share of step time the training loop waits for data (`Trainer.get_batch_samples`), with 0 and `--workers`
   loader workers (the model on `--model-threads` threads, the workers on the other cores). A CPU computes so
   slowly that it hides the data time, so the figure also gives the time to render one micro-batch of `--batch`
   rollouts here (decode, resize, tokenize: the collator) and the share it would take of a 7B step on one H100 at
   40 % MFU, whose compute time per micro-batch is estimated as

       seconds = (6 x 7.07e9 x T + 2 x 0.67e9 x 4 x I) / (0.4 x 989e12)

   (T tokens of the micro-batch, I of them image tokens, each made of 4 patches; 7.07e9 trainable and 0.67e9 frozen
   vision parameters in Qwen2.5-VL-7B), and the wait share with w workers as `max(0, render / w - seconds)` over
   the step.
4. With `--mfu` on a GPU: model FLOPs utilisation of a Qwen2.5-VL-7B-shaped PRM (full widths, `--mfu-layers`
   language layers and the full 32-block vision encoder, random weights, bf16, packed, `flash_attention_2` when
   installed, frozen vision encoder, no activation checkpointing) on one GPU:

       model FLOPs = 6 x N_trainable x T  +  2 x N_vision x P
       MFU = model FLOPs / seconds / peak dense bf16 FLOP/s (H100 and H200 SXM: 989e12, A100: 312e12)

   where T is the number of tokens of the packed rows (image tokens included), P the number of vision patches,
   N_trainable the trainable parameters (language model, projector and score head; the input embeddings, a
   lookup, excluded) and N_vision the frozen vision encoder's. Attention's sequence-quadratic FLOPs are not counted
   (the PaLM definition of MFU). Goal: at least 40 % on one H100.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import AttentionInterface, TrainerCallback
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.trainer_pt_utils import BatchRebalanceSampler, LengthGroupedSampler

from bis_prm.model.vision_tower import is_vision_tower_parameter
from bis_prm.testing import QWEN2_5_VL_7B_SHAPES, REAL_MAX_PIXELS, _corpus_text, _figure, make_tiny_vlm
from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.prm_trainer import PRMTrainer, _with_lengths
from bis_prm.training.sampling import PackedBatchRebalanceSampler

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
BATCHINGS = ("padded", "grouped", "rebalanced", "packed", "packed + rebalanced")
# The training settings of each timed batching
PER_ROLLOUT = {"model_init_kwargs": {"attn_implementation": "per_rollout_sdpa"}}
TRAINER_SETTINGS = {
    "padded": {"train_sampling_strategy": "random", "padding_free": False},
    "grouped": {"train_sampling_strategy": "group_by_length", "padding_free": False},
    "packed, dense mask": {"train_sampling_strategy": "random", "padding_free": True},
    "packed, per-rollout attention": {"train_sampling_strategy": "random", "padding_free": True, **PER_ROLLOUT},
    "packed + rebalanced, per-rollout attention": {
        "train_sampling_strategy": "batch_rebalance",
        "padding_free": True,
        **PER_ROLLOUT,
    },
}


def per_rollout_sdpa(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """`sdpa` on each rollout of a packed row (where the positions restart at 0), as varlen attention computes it;
    the vision encoder's calls and unpacked batches go to plain `sdpa`."""
    if position_ids is None or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist() + [query.shape[2]]
    pieces = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs)[0]
        for a, b in pairwise(starts)
    ]
    return torch.cat(pieces, dim=1), None


AttentionInterface.register("per_rollout_sdpa", per_rollout_sdpa)


def make_rollouts(root: Path, count: int, seed: int = 0, image_side=(300, 1500), steps=(3, 15)) -> Dataset:
    """`count` rollouts in the HF PRM format with one image each (sides uniform in `image_side`) and 3-15 steps."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = {"image": [], "question": [], "steps": [], "labels": []}
    for index in range(count):
        path = root / "images" / f"{index:05d}.png"
        _figure(rng, rng.randint(*image_side), rng.randint(*image_side)).save(path)
        n = rng.randint(*steps)
        rows["image"].append([str(path)])
        rows["question"].append(f"{_corpus_text(rng, rng.randint(15, 60))}?")
        rows["steps"].append([f"{_corpus_text(rng, rng.randint(8, 50))}." for _ in range(n)])
        rows["labels"].append([float(rng.random() < 0.7) for _ in range(n)])
    return Dataset.from_dict(rows)


# ---- 1. structure ----


def micro_batches(batching: str, lengths: list[int], ranks: int, batch: int, accumulation: int, seed: int = 42):
    """The micro-batches (lists of rollout indices) of each rank, as the Trainer deals them: `[rank][k]`.

    Without a rank-aware sampler, the DataLoader cuts the sampler's order into micro-batches of `batch` rollouts and
    `accelerate` deals them round-robin (micro-batch `k` to rank `k % ranks`); `BatchRebalanceSampler` gives each
    rank its own micro-batches."""
    generator = torch.Generator().manual_seed(seed)
    if "rebalanced" in batching:
        # as `PRMTrainer` picks it: the packed cost model with `padding_free`
        sampler = PackedBatchRebalanceSampler if batching.startswith("packed") else BatchRebalanceSampler
        return [
            list(sampler(lengths, batch * ranks * accumulation, ranks, accumulation, seed=seed, rank=r))
            for r in range(ranks)
        ]
    if batching == "grouped":
        order = list(LengthGroupedSampler(batch * accumulation, lengths=lengths, generator=generator))
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    steps = len(order) // (batch * ranks * accumulation)
    chunks = [order[k * batch : (k + 1) * batch] for k in range(steps * ranks * accumulation)]
    return [chunks[r::ranks] for r in range(ranks)]


def structure(lengths: list[int], ranks: int, batch: int, accumulation: int) -> dict[str, dict[str, float]]:
    """Figure 1 for every batching: non-padding fraction on one rank, and useful fraction with `ranks` ranks."""
    figures = {}
    for batching in BATCHINGS:
        packed = batching.startswith("packed")

        def cost(indices: list[int], packed: bool = packed) -> int:
            rollout = [lengths[i] for i in indices]
            return sum(rollout) if packed else len(rollout) * max(rollout)

        one_rank = micro_batches(batching, lengths, 1, batch, accumulation)[0]
        many = micro_batches(batching, lengths, ranks, batch, accumulation)
        useful = sum(lengths[i] for rank in many for mb in rank for i in mb)
        slowest = sum(max(cost(rank[k]) for rank in many) for k in range(len(many[0])))
        figures[batching] = {
            "non_padding_fraction": round(
                sum(lengths[i] for mb in one_rank for i in mb) / sum(cost(mb) for mb in one_rank), 4
            ),
            f"useful_fraction_{ranks}_ranks": round(useful / (ranks * slowest), 4),
        }
    return figures


# ---- 2, 3. timed trainer steps ----


class _Timing(TrainerCallback):
    """Starts the clock after `warmup` optimizer steps."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.end = time.perf_counter()


class TimedPRMTrainer(PRMTrainer):
    """`PRMTrainer` that counts the tokens it computes and the time its loop waits for batches."""

    def __init__(self, *args, warmup: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.timing = _Timing(warmup)
        self.add_callback(self.timing)
        self.tokens = {"useful": 0, "computed": 0, "patches": 0}
        self.seconds_waiting = 0.0

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        start = time.perf_counter()
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.timing.start is not None:
            self.seconds_waiting += time.perf_counter() - start
        return batches

    def compute_loss(self, model, inputs, *args, **kwargs):
        if self.timing.start is not None and model.training:
            mask = inputs.get("attention_mask")
            self.tokens["computed"] += inputs["input_ids"].numel()
            self.tokens["useful"] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            pixels = inputs.get("pixel_values")
            self.tokens["patches"] += pixels.shape[0] if pixels is not None else 0
        return super().compute_loss(model, inputs, *args, **kwargs)


def train_steps(model: str, dataset: Dataset, workdir: Path, settings: dict, warmup: int, steps: int) -> dict:
    """Run `warmup + steps` optimizer steps of `PRMTrainer` with `settings`; figures of the last `steps`."""
    args = PRMConfig(
        output_dir=str(workdir / "out"),
        max_steps=warmup + steps,
        learning_rate=1e-4,
        max_pixels=REAL_MAX_PIXELS,
        max_length=8192,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10_000,
        activation_checkpointing=False,
        **settings,
    )
    trainer = TimedPRMTrainer(model, args=args, train_dataset=dataset, warmup=warmup)
    trainer.train()
    seconds = trainer.timing.end - trainer.timing.start
    return {
        "useful_tokens_per_second": round(trainer.tokens["useful"] / seconds, 1),
        "non_padding_fraction": round(trainer.tokens["useful"] / trainer.tokens["computed"], 4),
        "seconds_per_step": round(seconds / steps, 3),
        "data_wait_share": round(trainer.seconds_waiting / seconds, 4),
        "_trainer": trainer,
        "_seconds": seconds,
    }


def stand_in_difference(dense: PRMTrainer, per_rollout: PRMTrainer) -> float:
    """Largest difference of the step logits of one packed batch between the two attention paths, same weights."""
    batch = dense.data_collator(dense.train_dataset.select(range(4)).to_list())
    batch = {
        key: value
        for key, value in batch.items()
        if isinstance(value, torch.Tensor) and key not in ("labels", "num_steps")
    }
    per_rollout.model.load_state_dict(dense.model.state_dict())
    with torch.no_grad():
        logits = [trainer.model.eval()(**batch).logits for trainer in (dense, per_rollout)]
    return float((logits[0] - logits[1]).abs().max())


def h100_wait_estimate(trainer: PRMTrainer, dataset: Dataset, batch: int, lengths: list[int]) -> dict:
    """Render time of a micro-batch here, and the wait share it would be of a 7B step on an H100 (docstring)."""
    rows = trainer.train_dataset.to_list()
    batches = [rows[k : k + batch] for k in range(0, min(len(rows), 8 * batch), batch)]
    start = time.perf_counter()
    image_tokens = sum(
        int((trainer.data_collator(b)["input_ids"] == trainer.processing_class.image_token_id).sum()) for b in batches
    )
    render = (time.perf_counter() - start) / len(batches)
    tokens = float(np.mean(lengths)) * batch
    gpu = (6 * 7.07e9 * tokens + 2 * 0.67e9 * 4 * image_tokens / len(batches)) / (0.4 * 989e12)
    return {
        "render_seconds_per_micro_batch": round(render, 3),
        "h100_7b_seconds_per_micro_batch_estimate": round(gpu, 3),
        **{
            f"h100_7b_wait_share_{w}_workers_estimate": round(
                (wait := max(0.0, render / w - gpu if w else render)) / (wait + gpu), 3
            )
            for w in (0, 1, 2, 4)
        },
    }


# ---- 4. MFU ----


def model_flops(model: torch.nn.Module, tokens: int, patches: int) -> float:
    """`6 x N_trainable x tokens + 2 x N_vision x patches` (see the module docstring)."""
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    trainable = vision = 0
    for name, parameter in model.named_parameters():
        if id(parameter) in embeddings:
            continue
        if is_vision_tower_parameter(name):
            vision += parameter.numel()
        elif parameter.requires_grad:
            trainable += parameter.numel()
    return 6 * trainable * tokens + 2 * vision * patches


def mfu(dataset: Dataset, workdir: Path, layers: int, batch: int, warmup: int, steps: int) -> dict:
    shapes = {
        "text_config": {**QWEN2_5_VL_7B_SHAPES["text_config"], "num_hidden_layers": layers},
        "vision_config": QWEN2_5_VL_7B_SHAPES["vision_config"],
    }
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = make_tiny_vlm(
        "qwen2_5_vl", workdir / "qwen2_5_vl_7b_shaped", shapes=shapes, max_pixels=REAL_MAX_PIXELS,
        dtype=torch.bfloat16, device=device,
    )  # fmt: skip
    try:
        import flash_attn  # noqa: F401

        attention = "flash_attention_2"
    except ImportError:
        attention = "sdpa"
    settings = {
        "padding_free": True,
        "train_sampling_strategy": "batch_rebalance",
        "per_device_train_batch_size": batch,
        "bf16": torch.cuda.is_available(),
        "dataloader_num_workers": 4,
        "dataloader_persistent_workers": True,
        "model_init_kwargs": {"dtype": torch.bfloat16, "attn_implementation": attention},
    }
    figures = train_steps(str(path), dataset, workdir / "mfu", settings, warmup, steps)
    trainer = figures.pop("_trainer")
    flops = model_flops(trainer.model, trainer.tokens["computed"], trainer.tokens["patches"])
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), None)
    return {
        "device": name,
        "attention": attention,
        "language_layers": layers,
        **{key: value for key, value in figures.items() if not key.startswith("_")},
        "model_tflops_per_second": round(flops / figures["_seconds"] / 1e12, 2),
        "mfu": round(flops / figures["_seconds"] / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, default=1024, help="Rollouts of the generated corpus.")
    parser.add_argument("--ranks", type=int, default=8, help="Ranks of the structure figures.")
    parser.add_argument("--batch", type=int, default=8, help="Rollouts per micro-batch (the recipes' 8).")
    parser.add_argument("--accumulation", type=int, default=8, help="Micro-batches per optimizer step (recipes: 8).")
    parser.add_argument("--timed-steps", type=int, default=4, help="Timed optimizer steps of each trainer run.")
    parser.add_argument("--timed-batch", type=int, default=4, help="Rollouts per micro-batch of the timed runs.")
    parser.add_argument("--workers", type=int, default=1, help="Loader workers of figure 3.")
    parser.add_argument("--model-threads", type=int, default=1, help="CPU threads of the model in figures 2-3.")
    parser.add_argument("--hidden-size", type=int, default=256, help="Width of the timed model's language model.")
    parser.add_argument("--structure-only", action="store_true", help="Figure 1 only (seconds).")
    parser.add_argument("--mfu", action="store_true", help="Figure 4 (a GPU).")
    parser.add_argument("--mfu-layers", type=int, default=4, help="Language layers of the 7B-shaped model.")
    parser.add_argument("--workdir", help="Where the corpus and models go (a temporary folder by default).")
    parser.add_argument("--output-json", help="Also write the figures to this file.")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_train_"))
    dataset = make_rollouts(workdir / "corpus", args.rollouts)
    width = args.hidden_size
    model = make_tiny_vlm(
        "qwen2_5_vl", workdir / "model", max_pixels=REAL_MAX_PIXELS,
        shapes={
            # head_dim 16, as the tiny model's multimodal rotary sections need
            "text_config": {"hidden_size": width, "intermediate_size": 4 * width, "num_attention_heads": width // 16},
            "vision_config": {"out_hidden_size": width},
        },
    )  # fmt: skip
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    lengths = _with_lengths(dataset, processor, PRMConfig(output_dir=str(workdir / "out"), max_pixels=REAL_MAX_PIXELS))
    lengths = lengths["length"]
    figures = {
        "corpus": {
            "rollouts": len(lengths),
            "tokens_per_rollout": {
                "mean": round(float(np.mean(lengths)), 1),
                "p10": int(np.percentile(lengths, 10)),
                "p90": int(np.percentile(lengths, 90)),
                "max": max(lengths),
            },
        },
        "1_structure": structure(lengths, args.ranks, args.batch, args.accumulation),
    }
    print(json.dumps(figures, indent=2), flush=True)
    if args.structure_only:
        return figures

    torch.set_num_threads(args.model_threads)
    warmup, steps = 1, args.timed_steps
    timed, timed_trainers = {}, {}
    base = {"per_device_train_batch_size": args.timed_batch, "dataloader_num_workers": args.workers}
    for batching, settings in TRAINER_SETTINGS.items():
        result = train_steps(str(model), dataset, workdir / batching, {**base, **settings}, warmup, steps)
        timed_trainers[batching] = result["_trainer"]
        timed[batching] = {key: value for key, value in result.items() if not key.startswith("_")}
    padded = timed["padded"]["useful_tokens_per_second"]
    for values in timed.values():
        values["useful_tokens_per_second_vs_padded"] = round(values["useful_tokens_per_second"] / padded, 3)
    figures["2_timed_steps"] = {"workers": args.workers, "model_threads": args.model_threads, **timed}

    figures["2_timed_steps"]["per_rollout_vs_dense_mask_max_logit_difference"] = stand_in_difference(
        timed_trainers["packed, dense mask"], timed_trainers["packed, per-rollout attention"]
    )

    recipe = TRAINER_SETTINGS["packed + rebalanced, per-rollout attention"]
    recipe = {**base, **recipe, "dataloader_num_workers": 0}
    no_workers = train_steps(str(model), dataset, workdir / "no_workers", recipe, warmup, steps)
    figures["3_data_wait_share"] = {
        "0_workers": no_workers["data_wait_share"],
        f"{args.workers}_workers": timed["packed + rebalanced, per-rollout attention"]["data_wait_share"],
        **h100_wait_estimate(no_workers["_trainer"], dataset, args.batch, lengths),
    }
    if args.mfu:
        figures["4_mfu"] = mfu(dataset, workdir, args.mfu_layers, args.batch, warmup=2, steps=args.timed_steps)
    print(json.dumps(figures, indent=2))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
