"""A plain, single-process JSON-lines implementation of the paper's BIS selection (`build_bis_subset.py`).

It is the test oracle for `bis-prm select --format internvl` on clean corpora and the baseline of
`bench_select.py`: files in sorted name order, one `json.loads` per line, top `max(1, int(m * ratio))` rollouts per
file by BIS (ties in file order), written in file order as InternVL conversation records: hard labels, or with
`soft=True` the MC scores as floats (the reference's `converted_soft`).
"""

from __future__ import annotations

import json
from pathlib import Path


def rollout_bis(scores: list[float], alpha: float) -> float:
    positives = [score for score in scores if score > 0.0]
    p_pos = len(positives) / len(scores)
    reliability = sum(positives) / len(positives) if positives else 1.0
    return (p_pos * (1.0 - p_pos) + alpha) * reliability


def step_scores(record: dict) -> list[float]:
    scores = []
    for step in record.get("steps_with_score") or []:
        try:
            scores.append(float(step["score"]))
        except (KeyError, TypeError, ValueError):
            continue
    return scores


def conversation(record: dict, soft: bool = False) -> dict | None:
    """The InternVL record, or None when the rollout cannot be converted."""
    steps = record.get("steps_with_score") or []
    if not record.get("image") or not steps:
        return None
    texts, labels = [], []
    for step in steps:
        text = (step.get("step") or "").strip()
        try:
            score = float(step.get("score"))
        except (TypeError, ValueError):
            return None
        if not text:
            return None
        texts.append(text + "<prm>")
        labels.append(score if soft else 1.0 if score > 0.0 else 0.0)
    question = str(record.get("question_orig") or record.get("question") or "").strip()
    human = {"from": "human", "value": f"Question: {question}\nProcess: " + "\n\n".join(texts)}
    return {"image": record["image"], "conversations": [human, {"from": "gpt", "value": labels}]}


def reference_select(
    annotations_dir: str | Path, output: str | Path, ratio: float, alpha: float, soft: bool = False
) -> int:
    """Write the reference BIS subset of `annotations_dir` to `output`; returns the number of records written."""
    written = 0
    with open(output, "w", encoding="utf-8") as out:
        for path in sorted(Path(annotations_dir).glob("*.jsonl")):
            lines = path.read_text(encoding="utf-8").split("\n")
            ranked = []
            for index, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                scores = step_scores(record)
                if scores:
                    ranked.append((index, rollout_bis(scores, alpha)))
            if not ranked:
                continue
            ranked.sort(key=lambda item: item[1], reverse=True)
            top_k = max(1, int(len(ranked) * ratio))
            for index in sorted(index for index, _ in ranked[:top_k]):
                record = conversation(json.loads(lines[index]), soft)
                if record is not None:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    written += 1
    return written


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Plain JSON-lines BIS selection (the paper's reference behaviour).")
    parser.add_argument("--annotations-dir", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.2)
    args = parser.parse_args()
    print(f"wrote {reference_select(args.annotations_dir, args.output, args.ratio, args.alpha)} rollouts")


if __name__ == "__main__":
    main()
