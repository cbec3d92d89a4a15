"""Corpus builders shared by the data-pipeline tests (clean corpora come from `benchmarks/make_corpus.py`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from make_corpus import make_corpus  # noqa: E402
from reference_selection import reference_select, rollout_bis  # noqa: E402

__all__ = ["DIRTY_LINES", "make_corpus", "reference_select", "rollout_bis", "write_dirty_corpus"]


def _rollout(image="img/a.png", scores=(1.0, 0.0), steps=None, **extra) -> str:
    steps = steps or [f"step {i}" for i in range(len(scores))]
    record = {"image": image, "question": "<image>\nQ?", "question_orig": "Q?", "answer": "A"}
    record["steps_with_score"] = [{"step": text, "score": score} for text, score in zip(steps, scores, strict=True)]
    record.update(extra)
    return json.dumps(record, ensure_ascii=False)


# (line, expected invalid_reason or None for a blank line that is not a rollout)
DIRTY_LINES = [
    (_rollout(scores=(0.5, 0.0)), ""),
    ("", None),
    ("   ", None),
    ('{"image": "img/b.png", "steps_with_score": [{"step": "s", "sc', "broken_json"),
    ("[1, 2, 3]", "broken_json"),
    (_rollout(scores=(0.25, 0.75)).replace("0.75", "null"), "missing_score"),
    (_rollout(scores=(0.25, 0.75)).replace("0.75", '"high"'), "missing_score"),
    (_rollout(scores=(0.25, 0.75)).replace("0.75", "NaN"), "missing_score"),
    (_rollout(scores=(0.25, 0.75)).replace(', "score": 0.75', ""), "missing_score"),
    (_rollout(scores=(0.25, 1.5)), "score_out_of_range"),
    (_rollout(scores=(-0.1, 0.5)), "score_out_of_range"),
    (_rollout(scores=(0.5, 0.5), steps=["ok", "  \n "]), "blank_step"),
    (_rollout(image=""), "missing_image"),
    (_rollout(image=None), "missing_image"),
    (_rollout(image=[]), "missing_image"),
    (_rollout(scores=()), "no_steps"),
    (_rollout(image=["img/c.png", "img/d.png"], scores=(0.0, 0.0)), ""),
    (_rollout(scores=(1, 0)), ""),
    (_rollout(scores=(0.875, 0.125, 0.0), steps=["é 中文", "two", "three"]), ""),
]


def write_dirty_corpus(root: Path, copies: int = 2) -> Path:
    """`copies` sources each holding `DIRTY_LINES`, plus a clean file; returns the annotations directory."""
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    for c in range(copies):
        (annotations / f"dirty_{c}.jsonl").write_text("\n".join(line for line, _ in DIRTY_LINES) + "\n\n")
    (annotations / "zz_clean.jsonl").write_text(_rollout(scores=(0.5, 0.0)) + "\n" + _rollout(scores=(1.0,)) + "\n")
    return annotations
