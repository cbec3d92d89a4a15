"""`bis-prm serve`: the real uvicorn server on 127.0.0.1 with a tiny text PRM, its endpoint classes without HTTP,
the batching engine, `RemoteScorer` and the verl reward function."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from PIL import Image

from bis_prm.cli import main as cli_main
from bis_prm.data.steps import split_steps
from bis_prm.model.inference import StepScorer, aggregate_scores
from bis_prm.model.modeling_prm import load_prm
from bis_prm.model.processing_prm import ExampleError
from bis_prm.serving.api_server import build_app
from bis_prm.serving.client import RemoteScorer, RemoteScorerError
from bis_prm.serving.engine import BatchingEngine
from bis_prm.serving.media import MediaError, load_request_image, to_data_url
from bis_prm.serving.protocol import RewardRequest, ScoreStepsRequest
from bis_prm.serving.serving_reward import RewardConfig, ServingReward, ServingStepScores
from bis_prm.serving.verl_reward import compute_score, compute_score_async
from tests.utils import REPO_ROOT, tiny_base

API_KEY = "test-key"

ROWS = [
    {"question": "What is 3 + 4?", "steps": ["3 + 4 = 7.", "The answer is 7."], "image": None},
    {"question": "What is 12 * 3?", "steps": ["12 * 3 = 36."], "image": None},
    {"question": "Is 9 prime?", "steps": ["9 = 3 * 3.", "So 9 is not prime.", "Answer: no."], "image": None},
    {"question": "Name a colour.", "steps": [], "image": None},  # no step: an error, the others are scored
]


@pytest.fixture(scope="module")
def prm_path(tmp_path_factory):
    model, processor = load_prm(tiny_base("qwen2", tmp_path_factory), head="linear")
    path = tmp_path_factory.mktemp("served-prm")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scorer(prm_path):
    model, processor = load_prm(prm_path)
    return StepScorer(model.eval(), processor, max_batch_size=16, max_batch_tokens=16384)


class _Served:
    """A uvicorn server on 127.0.0.1 (a free port) in a thread; `stop()` is what SIGTERM does to it."""

    def __init__(self, engine, config=None, **app_kwargs):
        self.engine = engine
        app = build_app(engine, config, **app_kwargs)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def _post(url: str, body, api_key: str | None = API_KEY, raw: bool = False) -> tuple[int, dict]:
    data = body if raw else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post_or_refused(url: str, body) -> tuple[int | None, dict | None]:
    """`_post`, or `(None, None)` when the server no longer takes connections (it never accepted the request)."""
    try:
        return _post(url, body)
    except (urllib.error.URLError, ConnectionError):
        return None, None


@pytest.fixture(scope="module")
def served(scorer):
    engine = BatchingEngine([scorer], max_batch_size=16)
    server = _Served(engine, RewardConfig(aggregation="min"), api_key=API_KEY, max_request_bytes=4096)
    yield server
    server.stop()


def _close(a, b, tol=1e-5):
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def _same_results(remote, local):
    assert len(remote) == len(local)
    for got, want in zip(remote, local, strict=True):
        if isinstance(want, ExampleError):
            assert isinstance(got, ExampleError) and (got.reason, got.detail) == (want.reason, want.detail)
        else:
            assert _close(got, want), (got, want)


# ---- over HTTP ----


def test_openrlhf_round_trip_equals_score_steps_and_aggregation(served, scorer):
    # what OpenRLHF's SingleTurnAgentExecutor sends: the decoded prompt + response, the prompt, the label
    prompts = ["Question: What is 3 + 4?\n", "Question: Is 9 prime?\n", "Q: empty\n", "Q: other\n"]
    responses = ["3 + 4 = 7.\n\nThe answer is 7.", "9 = 3 * 3.\n\n\n\nSo 9 is not prime.\n\nAnswer: no.", "\n\n", "x"]
    queries = [prompt + response for prompt, response in zip(prompts, responses, strict=True)]
    queries[3] = "a query that does not start with its prompt"
    status, answer = _post(
        served.url + "/get_reward", {"query": queries, "prompts": prompts, "labels": ["7", "no", "", ""]}
    )
    assert status == 200
    rows = [
        {"question": p, "steps": split_steps(r), "image": None}
        for p, r in zip(prompts[:2], responses[:2], strict=True)
    ]
    assert [len(row["steps"]) for row in rows] == [2, 3]
    expected = [aggregate_scores(scores, "min") for scores in scorer.score_rows(rows)]
    assert _close(answer["rewards"][:2], expected)
    assert answer["scores"] == answer["rewards"]
    assert answer["rewards"][2:] == [0.0, 0.0]  # unscorable rows: --unscorable-reward, flagged and explained
    assert answer["extra_logs"] == {"prm_num_steps": [2.0, 3.0, 0.0, 0.0], "prm_unscorable": [0.0, 0.0, 1.0, 1.0]}
    assert answer["errors"][:2] == [None, None]
    assert [error["reason"] for error in answer["errors"][2:]] == ["no_steps", "query_without_prompt"]


def test_remote_scorer_equals_step_scorer(served, scorer):
    rows = [*ROWS, {"question": "Which colour?", "steps": ["Red."], "image": Image.new("RGB", (8, 8), "red")}]
    remote = RemoteScorer(served.url, api_key=API_KEY).score_rows(rows)
    local = scorer.score_rows(rows)
    assert isinstance(local[3], ExampleError) and local[3].reason == "no_steps"
    assert isinstance(local[4], ExampleError) and local[4].reason == "image_for_text_model"
    _same_results(remote, local)
    # a local image file that cannot be read fails its row on the client, the others are scored
    remote = RemoteScorer(served.url + "/v1/score_steps", api_key=API_KEY).score_rows(
        [{**ROWS[0], "image": "/no/such/file.png"}, ROWS[1]]
    )
    assert isinstance(remote[0], ExampleError) and remote[0].reason == "missing_image"
    _same_results(remote[1:], scorer.score_rows(ROWS[1:2]))
    with pytest.raises(RemoteScorerError, match="401"):
        RemoteScorer(served.url, api_key="wrong").score_rows(ROWS[:1])
    # rows beyond the request size go in further requests (the server's limit here: 4096 bytes)
    before = served.engine.stats.requests_accepted
    many = [{**ROWS[i % 3], "question": f"{i}: " + "x" * 400} for i in range(12)]
    _same_results(
        RemoteScorer(served.url, api_key=API_KEY, max_request_bytes=1500).score_rows(many), scorer.score_rows(many)
    )
    assert served.engine.stats.requests_accepted - before >= 4


def test_prm_reward_remote_equals_in_process(served, scorer):
    rewards = pytest.importorskip("bis_prm.rewards", reason="PRMReward is on another branch until they merge")
    prompts = ["What is 3 + 4?", "Is 9 prime?", "Name a colour."]
    completions = ["3 + 4 = 7.\n\nThe answer is 7.", "9 = 3 * 3.\n\nSo 9 is not prime.\n\nAnswer: no.", "\n\n"]
    local = rewards.PRMReward((scorer.model, scorer.processor), aggregation="min")(prompts, completions)
    remote = rewards.PRMReward(url=served.url, api_key=API_KEY, aggregation="min")(prompts, completions)
    assert local[2] is None and remote[2] is None
    assert remote[:2] == pytest.approx(local[:2], abs=1e-5)


def test_32_concurrent_clients_equal_sequential_scoring_in_batches(scorer):
    rows = [
        {"question": f"What is {i} + {i % 5}?", "steps": [f"{i} + {i % 5} = {i + i % 5}."] * (1 + i % 3)}
        for i in range(32)
    ]
    held = _HeldBackend(scorer, lambda: engine.stats.requests_accepted >= 32)
    engine = BatchingEngine([held], max_batch_size=16)
    server = _Served(engine, api_key=None)
    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda row: _post(server.url + "/v1/score_steps", {"rows": [row]}), rows))
    finally:
        server.stop()
    assert all(status == 200 for status, _ in answers)
    sequential = [scorer.score_rows([row])[0] for row in rows]
    _same_results([answer["scores"][0] for _, answer in answers], sequential)
    # rows of many requests went through one backend call: 32 requests, far fewer calls
    assert engine.stats.requests_finished == 32 and engine.stats.rows_scored == 32
    assert engine.stats.largest_call >= 16 and engine.stats.backend_calls <= 4


class _HeldBackend:
    """A backend whose first call waits until `ready()` (bounded): the requests in flight pile up meanwhile."""

    def __init__(self, inner, ready):
        self.inner, self.ready, self.calls = inner, ready, []

    def score_rows(self, rows):
        deadline = time.monotonic() + 20
        while not self.calls and not self.ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.calls.append(len(rows))
        return self.inner.score_rows(rows)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"query": ["a"], "prompts": ', 400, "not valid JSON"),
        (b"", 422, "body"),
        ({"query": ["Q: a\n1."]}, 422, "prompts"),
        ({"query": "Q: a\n1.", "prompts": ["Q: a\n"]}, 422, "query"),
        ({"query": [1], "prompts": ["Q"]}, 422, "query.0"),
        ({"query": ["Q1."], "prompts": ["Q", "R"]}, 422, "prompts has 2 entries"),
        (["a list, not an object"], 422, "body"),
    ],
)
def test_malformed_reward_requests_get_4xx_naming_the_field(served, body, status, field):
    code, answer = _post(served.url + "/get_reward", body, raw=isinstance(body, bytes))
    assert code == status
    assert field in answer["error"]["message"] and answer["error"]["code"] == status


def test_malformed_step_rows_oversized_bodies_and_keys_then_still_serving(served):
    code, answer = _post(served.url + "/v1/score_steps", {"rows": [{"question": "q", "steps": "one string"}]})
    assert code == 422 and "rows.0.steps" in answer["error"]["message"]
    code, answer = _post(served.url + "/v1/score_steps", {"rows": [{"steps": ["a"]}]})
    assert code == 422 and "rows.0.question: Field required" in answer["error"]["message"]
    big = {"rows": [{"question": "q" * 5000, "steps": ["a"]}]}
    code, answer = _post(served.url + "/v1/score_steps", big)
    assert code == 413 and "4096" in answer["error"]["message"]
    # a chunked body (no content-length) is cut at the limit too
    chunks = (json.dumps(big).encode()[i : i + 1000] for i in range(0, 6000, 1000))
    response = httpx.post(
        served.url + "/v1/score_steps", content=chunks, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 413
    for key in ("wrong", None):
        code, answer = _post(served.url + "/get_reward", {"query": ["Q1."], "prompts": ["Q"]}, api_key=key)
        assert code == 401 and "Bearer" in answer["error"]["message"]
    with urllib.request.urlopen(served.url + "/health", timeout=10) as response:  # open without a key
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["backends"] == ["StepScorer"]
    code, answer = _post(served.url + "/v1/score_steps", {"rows": [ROWS[0]]})
    assert code == 200 and answer["errors"] == [None] and len(answer["scores"][0]) == 2


def test_verl_compute_score_sync_and_async(served, scorer, monkeypatch):
    question, solution = "What is 3 + 4?", "3 + 4 = 7.\n\nThe answer is 7."
    expected = aggregate_scores(scorer.score_rows([{"question": question, "steps": split_steps(solution)}])[0], "min")
    result = compute_score("gsm8k", solution, "7", {"question": question}, url=served.url, api_key=API_KEY)
    assert result["score"] == pytest.approx(expected, abs=1e-5) and result["prm_num_steps"] == 2.0
    monkeypatch.setenv("BIS_PRM_REWARD_URL", served.url)
    monkeypatch.setenv("BIS_PRM_API_KEY", API_KEY)

    async def many():  # the way verl's reward loop awaits it: many responses at once
        return await asyncio.gather(
            *(compute_score_async(data_source="gsm8k", solution_str=solution, ground_truth="7",
                                  extra_info={"question": question}, reward_router_address=None) for _ in range(4))
        )  # fmt: skip

    assert all(r["score"] == pytest.approx(expected, abs=1e-5) for r in asyncio.run(many()))
    no_question = compute_score("gsm8k", solution, "7", None)
    assert no_question["score"] == pytest.approx(
        aggregate_scores(scorer.score_rows([{"question": "", "steps": split_steps(solution)}])[0], "min"), abs=1e-5
    )
    assert compute_score("gsm8k", "", "7", {})["prm_unscorable"] == 1.0


def test_graceful_shutdown_finishes_every_accepted_request():
    backend = _SlowBackend(seconds=0.3)
    engine = BatchingEngine([backend], max_batch_size=2)
    server = _Served(engine)
    rows = [{"question": f"q{i}", "steps": ["a" * (i + 1), "b"]} for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_post, server.url + "/v1/score_steps", {"rows": [row]}, None) for row in rows]
        deadline = time.monotonic() + 20
        while engine.stats.requests_accepted < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats.rows_scored < 6  # still in flight when the shutdown starts
        server.stop()  # what uvicorn does on SIGTERM / SIGINT
        answers = [future.result() for future in futures]
    assert [status for status, _ in answers] == [200] * 6
    assert [answer["scores"][0] for _, answer in answers] == [_SlowBackend.scores(row) for row in rows]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "/health", timeout=5)


class _SlowBackend:
    """A fake replica: `seconds` per call, the step lengths / 100 as scores; records the rows of every call."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, []

    @staticmethod
    def scores(row):
        return [len(step) / 100 for step in row["steps"]]

    def score_rows(self, rows):
        self.calls.append([row["question"] for row in rows])
        time.sleep(self.seconds)
        return [self.scores(row) if row["steps"] else ExampleError("no_steps", "no step") for row in rows]


# ---- without HTTP ----


def test_engine_spreads_rows_across_replicas_and_keeps_order():
    replicas = [_SlowBackend(0.05), _SlowBackend(0.05)]
    engine = BatchingEngine(replicas, max_batch_size=3)
    requests = [[{"question": f"r{r}-{i}", "steps": ["x" * (r + i + 1)]} for i in range(r % 3 + 1)] for r in range(12)]

    async def serve_all():
        await engine.start()
        answers = await asyncio.gather(*(engine.score(rows) for rows in requests))
        await engine.close()
        return answers

    answers = asyncio.run(serve_all())
    assert answers == [[_SlowBackend.scores(row) for row in rows] for rows in requests]
    assert all(replica.calls for replica in replicas)  # both replicas worked
    assert max(len(call) for replica in replicas for call in replica.calls) == 3
    assert engine.stats.calls_per_backend == [len(replica.calls) for replica in replicas]


def test_engine_caps_calls_and_survives_a_failing_backend():
    class Failing:
        def score_rows(self, rows):
            raise RuntimeError("CUDA out of memory")

    class Short:  # a broken backend that loses a row must not hand out wrong scores
        def score_rows(self, rows):
            return [[0.5]] * (len(rows) - 1)

    engines = [BatchingEngine([_SlowBackend(0.0)], max_batch_size=2), BatchingEngine([Failing()])]
    engines.append(BatchingEngine([Short()]))

    async def run():
        for engine in engines:
            await engine.start()
        answers = [
            await engines[0].score([{"question": "q", "steps": ["a" * n]} for n in (4, 4, 3, 9, 1)]),
            await engines[1].score([{"question": "q", "steps": ["a"]}]),
            await engines[2].score([{"question": "q", "steps": ["a"]}] * 2),
            await engines[0].score([]),
        ]
        for engine in engines:
            await engine.close()
        return answers

    capped, broken, short, empty = asyncio.run(run())
    assert capped == [[0.04], [0.04], [0.03], [0.09], [0.01]] and empty == []
    assert [len(call) for call in engines[0].backends[0].calls] == [2, 2, 1]
    assert broken[0].reason == "backend_error" and "out of memory" in str(broken[0])
    assert [result.reason for result in short] == ["backend_error"] * 2
    assert engines[1].stats.rows_failed == 1 and engines[0].stats.requests_finished == 2


def test_a_backend_takes_its_next_rows_while_the_event_loop_is_busy():
    # under load the loop answers many requests between two backend calls; the backend must not wait for it
    engine = BatchingEngine([_SlowBackend(0.02)], max_batch_size=1)

    async def run():
        await engine.start()
        pending = asyncio.gather(*(engine.score([{"question": str(i), "steps": ["ab"]}]) for i in range(4)))
        await asyncio.sleep(0)  # the four requests are queued
        time.sleep(0.5)  # the loop is busy elsewhere: no await for half a second
        calls_while_busy = len(engine.backends[0].calls)
        answers = await pending
        await engine.close()
        return calls_while_busy, answers

    calls_while_busy, answers = asyncio.run(run())
    assert calls_while_busy == 4 and answers == [[[0.02]]] * 4
    assert engine.stats.backend_calls == 4 and engine.stats.largest_call == 1


def test_a_backend_that_exits_fails_its_rows_and_keeps_serving():
    class Exiting(_SlowBackend):
        def score_rows(self, rows):
            if not self.calls:
                self.calls.append("exit")
                raise SystemExit(3)
            return super().score_rows(rows)

    engine = BatchingEngine([Exiting(0.0)], max_batch_size=1)

    async def run():
        await engine.start()
        first = await engine.score([{"question": "a", "steps": ["ab"]}])
        second = await engine.score([{"question": "b", "steps": ["abc"]}])
        await engine.close()
        return first, second

    first, second = asyncio.run(run())
    assert first[0].reason == "backend_error" and "3" in str(first[0]) and second == [[0.03]]


def test_endpoint_classes_without_http():
    engine = BatchingEngine([_SlowBackend(0.0)])
    steps = ServingStepScores(engine, RewardConfig(aggregation="mean", separator="||", max_steps=2))
    reward = ServingReward(steps)

    async def run():
        await engine.start()
        got = await reward.create_reward(
            RewardRequest(query=["P:a||bbb||cc", "P:", "X"], prompts=["P:", "P:", "P:"], labels=None)
        )
        rows = await steps.score_steps(
            ScoreStepsRequest(
                rows=[{"question": "q", "steps": ["ab"]}, {"question": "q", "steps": ["a"], "image": "x"}]
            )
        )
        await engine.close()
        return got, rows

    got, rows = asyncio.run(run())
    # 3 pieces, max_steps=2: runs of 2 -> ["a||bbb", "cc"]; mean of 6/100 and 2/100
    assert got.rewards == [pytest.approx(0.04), 0.0, 0.0] and got.extra_logs["prm_num_steps"] == [2.0, 0.0, 0.0]
    assert [e.reason for e in got.errors[1:]] == ["no_steps", "query_without_prompt"]
    assert rows.scores == [[0.02], None] and rows.errors[1].reason == "image_not_allowed"
    assert RewardConfig(unscorable_reward=None).unscorable_reward is None
    # OpenRLHF with a chat template: the question is the user turn, the policy's end marker is cut off
    chat = RewardConfig(question_pattern=r"user\n(?P<question>.*?)<[|]im_end[|]>", strip_suffixes=("<|im_end|>",))
    prompt = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"
    )
    row = chat.row(prompt + "3 + 4 = 7.\n\nSo 7.<|im_end|>\n", prompt)
    assert row == {"question": "What is 3 + 4?", "steps": ["3 + 4 = 7.", "So 7."], "image": None}
    assert chat.question("no chat markup") == "no chat markup"
    assert RewardConfig(strip_suffixes=("</s>", "<|im_end|>")).response("a</s> <|im_end|>\n") == "a"
    with pytest.raises(ValueError, match="aggregation"):
        RewardConfig(aggregation="max")


def test_request_images(tmp_path):
    Image.new("RGB", (5, 4), "blue").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert load_request_image(to_data_url(Image.new("RGB", (3, 2)))).size == (3, 2)
    assert load_request_image(to_data_url(tmp_path / "ok.png")).size == (5, 4)
    assert load_request_image("ok.png", tmp_path).size == (5, 4)
    cases = [
        (str(tmp_path / "ok.png"), None, "image_not_allowed"),  # no server-side path without the option
        ("../ok.png", tmp_path / "sub", "image_not_allowed"),
        ("http://example.com/a.png", tmp_path, "image_not_allowed"),
        ("data:image/png;base64,@@@", None, "image_unreadable"),
        (to_data_url(tmp_path / "broken.png"), None, "image_unreadable"),
        ("missing.png", tmp_path, "missing_image"),
    ]
    (tmp_path / "sub").mkdir()
    for value, allowed, reason in cases:
        with pytest.raises(MediaError) as error:
            load_request_image(value, allowed)
        assert error.value.reason == reason, value
        assert "BytesIO" not in str(error.value)
    big = io.BytesIO()
    Image.new("L", (100, 100)).save(big, format="PNG")
    with pytest.raises(MediaError, match="more than 50"):
        load_request_image(to_data_url(Image.open(big)), max_pixels=50)


# ---- the command line ----


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/no/such/prm"], "does not exist"),
        (["--model", "x/y", "--port", "70000"], "TCP port"),
        (["--model", "x/y", "--vllm-url", "ftp://host"], "http(s)://"),
        (["--model", "x/y", "--separator", ""], "must not be empty"),
        (["--model", "x/y", "--aggregation", "max"], "invalid choice"),
        (["--model", "x/y", "--allowed-local-media-path", "/no/such/dir"], "no such directory"),
        (["--model", "x/y", "--api-key", " "], "--api-key must not be empty"),
        (["--model", "x/y", "--question-pattern", "user(.*"], "not a regular expression"),
        (["--model", "x/y", "--question-pattern", "user.*"], "needs a group"),
    ],
)
def test_cli_mistakes_exit_2_before_loading(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(cli_main(["serve", *argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bis-prm serve: error:") and message in err


def test_cli_vllm_urls_make_one_backend_each(monkeypatch):
    import argparse
    import types

    from bis_prm.cli.serve import _backends

    class FakeVLLMScorer:  # the interface of bis_prm.serving.vllm.VLLMScorer
        def __init__(self, url, model, api_key=None):
            self.url, self.model, self.api_key = url, model, api_key

    monkeypatch.setitem(sys.modules, "bis_prm.serving.vllm", types.SimpleNamespace(VLLMScorer=FakeVLLMScorer))
    urls = ["http://127.0.0.1:8100", "http://127.0.0.1:8101"]
    args = argparse.Namespace(vllm_url=urls, model="user/prm", vllm_api_key="k")
    backends = _backends(args)
    assert [(b.url, b.model, b.api_key) for b in backends] == [(url, "user/prm", "k") for url in urls]


@pytest.mark.slow  # a fresh process imports torch and transformers: ~45 s on the shared 2-core machine
def test_cli_serves_and_drains_on_sigterm(prm_path, scorer):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIS_PRM_API_KEY": API_KEY}
    command = [sys.executable, "-m", "bis_prm", "serve", "--model", str(prm_path), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--separator", r"\n\n", "--log-level", "warning"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "bis-prm serve did not start"
                time.sleep(0.2)
        body = {"query": ["Q?1 + 1 = 2.\n\nSo 2."], "prompts": ["Q?"]}
        expected = aggregate_scores(
            scorer.score_rows([{"question": "Q?", "steps": ["1 + 1 = 2.", "So 2."]}])[0], "min"
        )
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(_post_or_refused, url + "/get_reward", body) for _ in range(16)]
            time.sleep(0.05)
            process.send_signal(signal.SIGTERM)  # while requests are in flight (or just answered)
            answers = [future.result() for future in futures]
        # every request that reached the server before it stopped listening was answered; none failed
        assert {status for status, _ in answers} <= {200, None}
        answered = [answer for status, answer in answers if status == 200]
        assert answered and all(a["rewards"][0] == pytest.approx(expected, abs=1e-5) for a in answered)
        # uvicorn re-raises the signal once it has shut down, so the exit status reports SIGTERM
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
