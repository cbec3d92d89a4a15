import json

import pytest

import bis_prm.model.inference
from bis_prm.evaluation.best_of_n import best_of_n, load_candidates, rerank

QUESTIONS = [
    {
        "id": "a",
        "question": "1+1?",
        "answer": "2",
        "candidates": [
            {"steps": ["s1", "s2"], "answer": "3"},  # mean 0.6, min 0.3
            {"steps": ["t1", "t2"], "answer": "2"},  # mean 0.55, min 0.5
        ],
    },
    {
        "id": "b",
        "question": "2+2?",
        "candidates": [
            {"steps": ["u1"], "correct": True},  # 0.2
            {"steps": ["v1", "v2"], "correct": False},  # mean 0.45, min 0.1, last 0.8
        ],
    },
]
SCORES = {"s1": 0.9, "s2": 0.3, "t1": 0.6, "t2": 0.5, "u1": 0.2, "v1": 0.1, "v2": 0.8}


def fake_score_steps(model, processor, examples, batch_size=8, progress=False, max_images=None):
    return [[SCORES[step] for step in example["steps"]] for example in examples]


@pytest.mark.parametrize(
    "aggregation, chosen, accuracy", [("mean", [0, 1], 0.0), ("min", [1, 0], 1.0), ("last", [1, 1], 0.5)]
)
def test_best_of_n_with_a_monkeypatched_scorer(tmp_path, monkeypatch, aggregation, chosen, accuracy):
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    monkeypatch.setattr(bis_prm.model.inference, "score_steps", fake_score_steps)
    results, summary = best_of_n(None, None, path, aggregation)
    assert [r["chosen"] for r in results] == chosen
    assert summary["accuracy"] == accuracy
    assert summary["first_candidate"] == 0.5 and summary["oracle"] == 1.0 and summary["with_answers"] == 2


def test_rerank_ties_unknown_answers_and_bad_files(tmp_path):
    question = {"id": 0, "candidates": [{"steps": ["x"]}, {"steps": ["y"]}]}
    results, summary = rerank([question], [[[0.5], [0.5]]], "prod")
    assert results[0]["chosen"] == 0 and summary["accuracy"] is None and summary["with_answers"] == 0
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "candidates": [{"steps": []}]}) + "\n")
    with pytest.raises(ValueError, match="line 1: candidate 0 has no `steps`"):
        load_candidates(path)
