"""Memory of `bis-prm convert-internvl` against a converter that reads the whole checkpoint before writing.

    python -m benchmarks.bench_convert_internvl                 # from the repository root
    python -m benchmarks.bench_convert_internvl --layers 24 --max-shard-size 200MB --workdir /tmp/bench_convert

A random checkpoint in InternVL2.5's remote-code layout (`bis_prm.testing.make_remote_internvl`: InternLM2 with a
packed `wqkv`, 1024 wide, `--layers` layers, bf16) is converted twice, each in a fresh process whose resident memory
a thread samples every 5 ms:

1. `convert_internvl` (tensors read one at a time from the memory-mapped files, written shard by shard);
2. the baseline: every source tensor loaded (`safetensors.torch.load_file`), the converted state dict built next to
   it, then written, the approach of transformers' `convert_internvl_weights_to_hf.py`, which also loads the model.

The script prints each one's peak growth of private memory (`RssAnon`) and, apart, of mapped file pages (`RssFile`:
the page cache of the memory-mapped checkpoint, given back under memory pressure) next to the checkpoint's size, and
checks that both wrote the same tensors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_zero3 import PeakMemory

REPO_ROOT = Path(__file__).resolve().parents[1]


def _convert(source: Path, output: Path, max_shard_size: str) -> None:
    from bis_prm import convert_internvl

    convert_internvl(source, output, max_shard_size=max_shard_size)


def _baseline(source: Path, output: Path) -> None:
    # the same conversion, without streaming: the converter's own plan applied to a fully loaded state dict
    from safetensors.torch import load_file, save_file

    from bis_prm.model import convert_internvl as conversion

    remote = json.loads((source / "config.json").read_text(encoding="utf-8"))
    tokenizer = conversion._tokenizer(source)
    config = conversion.internvl_config(remote, tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    files = conversion._safetensors_files(source)
    shapes, _, _ = conversion._read_shapes(files)
    plan = conversion._Plan(config, shapes, internlm2=True)
    state_dict = {}
    for file in files:
        state_dict.update(load_file(file))
    converted = {name: tensor for key in sorted(state_dict) for name, tensor in plan.convert(key, state_dict[key])}
    output.mkdir(parents=True)
    save_file(converted, output / "model.safetensors", metadata={"format": "pt"})


def child(method: str, source: Path, output: Path, max_shard_size: str, result: Path) -> None:
    import safetensors.torch
    import torch
    from transformers import InternVLForConditionalGeneration

    import bis_prm.model.convert_internvl  # noqa: F401  (the libraries' own memory is not the conversion's)

    del safetensors, InternVLForConditionalGeneration
    torch.set_num_threads(1)
    with PeakMemory() as memory:
        if method == "convert_internvl":
            _convert(source, output, max_shard_size)
        else:
            _baseline(source, output)
    growth = {kind: memory.peak[kind] - memory.before[kind] for kind in ("anon", "file")}
    result.write_text(json.dumps(growth), encoding="utf-8")


def _same_tensors(first: Path, second: Path) -> float:
    """The largest difference between the tensors of two converted folders (they must hold the same names)."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        found = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(file, "pt") as f:
                found.update({key: (file, key) for key in f.keys()})
        return found

    a, b = tensors(first), tensors(second)
    if set(a) - set(b) - {"model.language_model.embed_tokens.weight", "lm_head.weight"}:
        raise SystemExit(f"different tensors: {sorted(set(a) ^ set(b))[:5]}")
    worst = 0.0
    for key in sorted(set(a) & set(b)):
        with safe_open(a[key][0], "pt") as f, safe_open(b[key][0], "pt") as g:
            x, y = f.get_tensor(key), g.get_tensor(key)
            rows = min(x.shape[0], y.shape[0])  # the converter adds a <video> row to the vocabulary
            worst = max(worst, float((x[:rows].float() - y[:rows].float()).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--max-shard-size", default="200MB")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_convert_internvl"))
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "SOURCE", "OUTPUT", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, source, output, result = args.child
        child(method, Path(source), Path(output), args.max_shard_size, Path(result))
        return

    import shutil

    import torch

    from bis_prm.testing import make_remote_internvl

    shutil.rmtree(args.workdir, ignore_errors=True)
    source = args.workdir / "remote"
    text = {"hidden_size": 1024, "heads": 16, "kv_heads": 4, "intermediate": 2816, "layers": args.layers}
    vision = {"hidden_size": 256, "heads": 4, "intermediate": 1024, "layers": 4, "image": 448, "patch": 14}
    make_remote_internvl(source, llm="internlm2", shards=4, text=text, vision=vision, dtype=torch.bfloat16)
    size = sum(file.stat().st_size for file in source.glob("*.safetensors"))
    print(f"checkpoint: {size / 2**20:,.0f} MiB in 4 files ({args.layers} InternLM2 layers, bf16)")
    figures = {}
    for method in ("convert_internvl", "baseline"):
        result = args.workdir / f"{method}.json"
        command = [sys.executable, "-m", "benchmarks.bench_convert_internvl", "--max-shard-size", args.max_shard_size]
        command += ["--child", method, str(source), str(args.workdir / method), str(result)]
        subprocess.run(command, check=True, cwd=REPO_ROOT)
        growth = json.loads(result.read_text())
        figures[method] = growth["anon"]
        print(
            f"{method:>16}: peak private memory +{growth['anon'] / 2**20:,.0f} MiB ({growth['anon'] / size:.2f}x the "
            f"checkpoint), mapped file pages +{growth['file'] / 2**20:,.0f} MiB"
        )
    print(f"ratio: {figures['convert_internvl'] / figures['baseline']:.3f} of the baseline's peak")
    print(f"largest difference between the two outputs: {_same_tensors(*(args.workdir / m for m in figures)):.1e}")


if __name__ == "__main__":
    main()
