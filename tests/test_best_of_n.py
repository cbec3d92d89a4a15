import json

import pytest

from bis_prm.cli import main
from bis_prm.evaluation.best_of_n import best_of_n, load_candidates, rerank
from bis_prm.model.inference import aggregate_scores, score_steps
from bis_prm.model.modeling_prm import load_prm
from tests.utils import image, tiny_base

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


@pytest.mark.parametrize(
    "aggregation, chosen, accuracy", [("mean", [0, 1], 0.0), ("min", [1, 0], 1.0), ("last", [1, 1], 0.5)]
)
def test_rerank_picks_by_aggregated_scores(aggregation, chosen, accuracy):
    step_scores = [[[SCORES[step] for step in c["steps"]] for c in q["candidates"]] for q in QUESTIONS]
    results, summary = rerank(QUESTIONS, step_scores, aggregation)
    assert [r["chosen"] for r in results] == chosen
    assert summary["accuracy"] == accuracy
    assert summary["first_candidate"] == 0.5 and summary["oracle"] == 1.0 and summary["with_answers"] == 2


def test_rerank_ties_and_unknown_answers():
    question = {"id": 0, "candidates": [{"steps": ["x"]}, {"steps": ["y"]}]}
    results, summary = rerank([question], [[[0.5], [0.5]]], "prod")
    assert results[0]["chosen"] == 0 and summary["accuracy"] is None and summary["with_answers"] == 0


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    model, processor = load_prm(tiny_base("qwen2_5_vl", tmp_path_factory), head="linear")
    path = tmp_path_factory.mktemp("bon-prm")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model, processor


def test_bad_questions_are_skipped_and_the_others_reranked_with_their_own_scores(prm, tmp_path, capsys):
    path, model, processor = prm
    image("red").save(tmp_path / "fig.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    good = [{**q, "image": "fig.png"} for q in QUESTIONS]
    lines = [
        json.dumps(good[0]),
        json.dumps({"question": "q", "candidates": [{"steps": []}]}),  # no steps
        "{broken",
        json.dumps({**good[1], "image": ["broken.png"]}),  # unreadable image
        json.dumps({"question": "q", "candidates": "not a list"}),
        json.dumps(good[1]),
    ]
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    questions, skipped = load_candidates(candidates)
    assert [q["line"] for q in questions] == [1, 6]
    assert skipped.counts() == {"no_steps": 1, "broken_json": 1, "image_unreadable": 1, "wrong_type": 1}

    assert main(["bon", "--model", str(path), "--candidates", str(candidates), "--aggregation", "min",
                 "--output", str(tmp_path / "choices.jsonl")]) == 0  # fmt: skip
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["questions"] == 2 and summary["questions_read"] == 6
    assert {reason: entry["lines"] for reason, entry in summary["skipped"].items()} == {
        "no_steps": [2],
        "broken_json": [3],
        "image_unreadable": [4],
        "wrong_type": [5],
    }
    assert "WARNING: 4 of 6 questions were skipped" in captured.err
    choices = [json.loads(line) for line in (tmp_path / "choices.jsonl").read_text().splitlines()]
    for choice, question in zip(choices, good, strict=True):
        examples = [{"image": str(tmp_path / "fig.png"), "question": question["question"], "steps": c["steps"]}
                    for c in question["candidates"]]  # fmt: skip
        expected = [aggregate_scores(s, "min") for s in score_steps(model, processor, examples, batch_size=1)]
        assert choice["scores"] == pytest.approx(expected, abs=1e-5)
        assert choice["chosen"] == max(range(len(expected)), key=lambda k: (expected[k], -k))


def test_best_of_n_in_python_matches_the_cli(prm, tmp_path):
    _, model, processor = prm
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    results, summary = best_of_n(model, processor, candidates, "mean")
    assert [r["id"] for r in results] == ["a", "b"] and summary["skipped"] == {} and summary["questions_read"] == 2
