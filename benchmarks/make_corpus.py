"""Generate a synthetic corpus in the raw VisualPRM400K layout (`<root>/annotations/<source>.jsonl`).

Rollouts look like the real ones: a long instruction-style question, 1-12 steps with MC scores in multiples of
1/16 (16 MC samples, so BIS ties are common), unicode text, and a few sources storing `image` as a list in some
rows (as multi-image sources do). Used by the tests (small corpora) and by `bench_select.py` (400k rollouts).

    python benchmarks/make_corpus.py /tmp/corpus --sources 38 --rollouts 10527
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

_WORDS = (
    "the triangle area angle value figure shows compute therefore circle radius length equals total number of "
    "each side graph point line answer option 距离 角度 面积 température naïve ≤ ≥ π √ ∠ – “quoted” "
).split()


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def make_rollout(rng: random.Random, source: str, index: int, list_image: bool) -> dict:
    """One synthetic rollout record."""
    n_steps = rng.randint(1, 12)
    steps = []
    for j in range(n_steps):
        # later steps fail more often, like MC estimates along a solution
        correct = rng.choice([16, 16, 16, 15, 14, 12, 8, 4, 1, 0, 0]) if j < n_steps // 2 else rng.randint(0, 16)
        text = f"Step {j + 1}: {_text(rng, rng.randint(8, 40))}."
        steps.append({"step": text, "score": correct / 16, "num_mc_correct": correct, "num_mc_total": 16})
    image = f"VisualPRM400K-v1.1-Raw/{source}/{index:06d}.png"
    question_orig = f"{_text(rng, rng.randint(10, 40))}?"
    return {
        "image": [image, image.replace(".png", "_b.png")] if list_image else image,
        "question": f"<image>\n{question_orig}\nAnswer the question using a single word or phrase.",
        "question_orig": question_orig,
        "answer": rng.choice(["A", "B", "C", "D", "12", "3.5", "yes"]),
        "response": "\n\n".join(step["step"] for step in steps),
        "num_mc_sequences": 16,
        "steps_with_score": steps,
    }


def make_corpus(
    root: str | Path,
    num_sources: int = 38,
    rollouts_per_source: int = 100,
    seed: int = 0,
    list_image_sources: int = 3,
    list_image_share: float = 0.2,
) -> Path:
    """Write the corpus under `root/annotations`; the first `list_image_sources` sources mix str and list images."""
    rng = random.Random(seed)
    annotations = Path(root) / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    for s in range(num_sources):
        source = f"source_{s:02d}"
        with open(annotations / f"{source}.jsonl", "w", encoding="utf-8") as f:
            for i in range(rollouts_per_source):
                list_image = s < list_image_sources and rng.random() < list_image_share
                f.write(json.dumps(make_rollout(rng, source, i, list_image), ensure_ascii=False) + "\n")
    return annotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--sources", type=int, default=38)
    parser.add_argument("--rollouts", type=int, default=10527, help="rollouts per source (38 x 10527 ~ 400k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list-image-sources", type=int, default=3)
    args = parser.parse_args()
    make_corpus(args.root, args.sources, args.rollouts, args.seed, args.list_image_sources)


if __name__ == "__main__":
    main()
