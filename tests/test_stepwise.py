"""Scoring and selection of stepwise corpora in other layouts: any MC-annotated dataset, TRL's stepwise format."""

import json

import datasets
import numpy as np
import pytest

from bis_prm.cli import main
from bis_prm.data.selection import run_selection
from bis_prm.data.stepwise import StepwiseColumns, from_trl_stepwise, is_stepwise_corpus, read_stepwise
from bis_prm.training.prm_trainer import PRMTrainer
from tests.utils import tiny_base, tiny_config


def _bis(scores, alpha):
    positive = [s for s in scores if s > 0]
    p = len(positive) / len(scores)
    return (p * (1 - p) + alpha) * (sum(positive) / len(positive) if positive else 1.0)


def _good(i, n_steps=3):
    rng = np.random.default_rng(i)
    scores = [float(v) for v in rng.integers(0, 17, size=n_steps) / 16]
    return {"question": f"q{i}?", "steps": [f"step {j} of {i}." for j in range(n_steps)], "mc_scores": scores}


# line -> (raw line, reason); None: a valid rollout
BAD_LINES = {
    3: (b"{broken", "broken_json"),
    5: (b'{"question": "q", "steps": ["a"], "mc_scores": [0.5]}\xff', "invalid_utf8"),
    6: (json.dumps({"question": 3, "steps": ["a"], "mc_scores": [0.5]}).encode(), "wrong_type"),
    7: (json.dumps({"question": "q", "steps": [], "mc_scores": []}).encode(), "no_steps"),
    8: (json.dumps({"question": "q", "steps": ["a", " "], "mc_scores": [0.5, 0.5]}).encode(), "blank_step"),
    9: (json.dumps({"question": "q", "steps": ["a", "b"], "mc_scores": [0.5]}).encode(), "length_mismatch"),
    10: (json.dumps({"question": "q", "steps": ["a"], "mc_scores": [None]}).encode(), "missing_score"),
    11: (json.dumps({"question": "q", "steps": ["a"], "mc_scores": [1.5]}).encode(), "score_out_of_range"),
    12: (json.dumps({"question": "q", "steps": ["a"], "mc_scores": ["high"]}).encode(), "score_out_of_range"),
    13: (json.dumps({"question": "q", "steps": ["a"], "mc_scores": [10**400]}).encode(), "score_out_of_range"),
    14: (b"[1, 2]", "wrong_type"),
}


def _write(path, lines, bom=False, crlf=False):
    end = b"\r\n" if crlf else b"\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + end.join(lines) + end)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    good = iter(range(100))
    lines = []
    for line in range(1, 21):
        if line == 4:
            lines.append(b"")  # blank line
        elif line in BAD_LINES:
            lines.append(BAD_LINES[line][0])
        else:
            lines.append(json.dumps(_good(next(good))).encode())
    _write(root / "algebra.jsonl", lines)
    _write(root / "geometry.jsonl", [json.dumps(_good(100 + i, 2)).encode() for i in range(10)], bom=True, crlf=True)
    return root


def test_any_mc_corpus_is_selected_per_file_with_every_bad_line_located(corpus):
    assert is_stepwise_corpus(corpus)
    selection = run_selection(corpus, ratio=0.25, alpha=0.2)
    report = selection.report
    algebra = report["sources"]["algebra"]
    assert algebra["read"] == 19 and algebra["blank_lines"] == 1
    assert algebra["valid"] == 19 - len(BAD_LINES) and report["sources"]["geometry"]["valid"] == 10
    expected = {}
    for line, (_, reason) in BAD_LINES.items():
        expected.setdefault(reason, []).append({"file": "algebra.jsonl", "line": line})
    assert report["dropped_rows"] == {reason: expected[reason] for reason in report["dropped_rows"]}
    assert set(report["dropped_rows"]) == set(expected)
    # per file, the top max(1, int(m * ratio)) by BIS, ties in file order, written in file order
    kept = selection.to_prm()
    for source, rows in (("algebra", range(8)), ("geometry", range(100, 110))):
        candidates = [_good(i, 3 if source == "algebra" else 2) for i in rows]
        k = max(1, int(len(candidates) * 0.25))
        order = sorted(range(len(candidates)), key=lambda j: -_bis(candidates[j]["mc_scores"], 0.2))[:k]
        want = [candidates[j]["question"] for j in sorted(order)]
        assert [row["question"] for row in kept if row["source"] == source] == want
    row = kept[0]
    assert row["image"] == [] and row["labels"] == [float(s > 0) for s in row["mc_scores"]]


def test_bom_and_crlf_read_the_same_as_clean_files(corpus, tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    _write(clean / "geometry.jsonl", [json.dumps(_good(100 + i, 2)).encode() for i in range(10)])
    dirty, _, _ = read_stepwise(corpus / "geometry.jsonl")
    plain, _, _ = read_stepwise(clean / "geometry.jsonl")
    assert dirty.to_list() == plain.to_list()


def test_trl_rows_have_reliability_1_and_rank_by_label_mixture():
    rows = {
        "prompt": ["a?", "b?", "c?", "d?"],
        "completions": [["s1", "s2"], ["s1"], ["x", "y", "z"], ["u", "v", "w", "t"]],
        "labels": [[True, False], [True], [True, True, False], [False, False, False, False]],
    }
    selection = run_selection(datasets.Dataset.from_dict(rows), ratio=0.5, alpha=0.05)
    scored = selection.scored
    assert scored["reliability"] == [1.0] * 4
    np.testing.assert_allclose(scored["bis"], [0.25 + 0.05, 0.05, 2 / 9 + 0.05, 0.05])
    assert [row["question"] for row in selection.to_prm()] == ["a?", "c?"]


def test_named_columns_a_source_column_and_parquet(tmp_path):
    ds = datasets.Dataset.from_dict(
        {
            "problem": ["p1", "p2", "p3", "p4"],
            "reasoning_steps": [["a", "b"], ["c"], ["d", "e"], ["f", "g"]],
            "mc": [[1.0, 0.0], [0.5], [0.25, 0.25], [0.0, 0.0]],
            "subject": ["x", "y", "x", "y"],
        }
    )
    columns = StepwiseColumns(question="problem", steps="reasoning_steps", scores="mc", source="subject")
    path = tmp_path / "corpus.parquet"
    ds.to_parquet(path)
    for corpus in (ds, path):
        selection = run_selection(corpus, ratio=0.5, alpha=0.2, columns=columns)
        assert list(selection.report["sources"]) == ["x", "y"]
        # y: p2 (p_pos 1, R 0.5: BIS 0.1) loses to p4 (no positive step, R 1: BIS 0.2)
        assert [row["question"] for row in selection.to_prm()] == ["p1", "p4"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['mc_scores'\]"):
        run_selection(ds, columns={"question": "problem", "steps": "reasoning_steps"})


def test_select_cli_on_named_columns_and_a_missing_one(tmp_path, capsys):
    corpus = tmp_path / "math.jsonl"
    rows = [{"problem": f"p{i}", "chain": ["a", "b"], "mc": [1.0, i / 10]} for i in range(10)]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "subset.jsonl"
    flags = ["--question-column", "problem", "--steps-column", "chain"]
    assert main(["select", "--annotations-dir", str(corpus), *flags, "--scores-column", "mc", "--ratio", "0.2",
                 "--output", str(output)]) == 0  # fmt: skip
    kept = [json.loads(line) for line in output.read_text().splitlines()]
    # p0 (1.0, 0.0) is mixed: BIS (0.25 + 0.2) * 1.0; the others are all positive: 0.2 * R, highest R for p9
    assert [row["question"] for row in kept] == ["p0", "p9"]
    assert main(["select", "--annotations-dir", str(corpus), *flags, "--output", str(tmp_path / "x.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "bis-prm select: error:" in error and "no column(s) ['mc_scores']" in error.splitlines()[-1]


def test_the_trainer_reads_trl_rows_as_they_are(tmp_path_factory, tmp_path):
    trl = datasets.Dataset.from_dict(
        {"prompt": ["1 + 1?", "2 + 2?"], "completions": [["1 + 1 = 2.", "So 2."], ["2 + 2 = 5."]],
         "labels": [[True, False], [False]]}
    )  # fmt: skip
    converted = from_trl_stepwise(trl)
    assert converted.to_list() == [
        {"question": "1 + 1?", "steps": ["1 + 1 = 2.", "So 2."], "labels": [1.0, 0.0], "mc_scores": [1.0, 0.0]},
        {"question": "2 + 2?", "steps": ["2 + 2 = 5."], "labels": [0.0], "mc_scores": [0.0]},
    ]
    hf = datasets.Dataset.from_dict({k: converted[k] for k in ("question", "steps", "labels")})
    losses = []
    for dataset in (trl, hf):
        args = tiny_config(tmp_path / str(len(losses)), max_steps=1, train_sampling_strategy="sequential")
        trainer = PRMTrainer(str(tiny_base("qwen2", tmp_path_factory)), args=args, train_dataset=dataset)
        trainer.train()
        losses.append(trainer.state.log_history[0]["loss"])
    assert losses[0] == losses[1]
