"""`bis-prm annotate --backend vllm-server` against a real vLLM server (the CPU build, in the virtualenv `.venv-vllm`
or the Python named by `BIS_PRM_VLLM_PYTHON`) serving a tiny text policy: the corpus is the VisualPRM400K-Raw
layout, seeded requests make a rerun byte-identical, and the counted tokens are the server's own counts. One server
serves the module."""

import json

import httpx
import pytest

from bis_prm.annotation import AnnotateConfig, run_annotation
from bis_prm.cli import main
from bis_prm.data.visualprm400k import load_visualprm400k
from bis_prm.serving.vllm import CPU_ARGS
from bis_prm.testing import make_tiny_lm

from .test_vllm import VLLM_PYTHON, _free_port, _vllm_missing, running_vllm

ROWS = [
    {"question": "What is 3 + 4?", "answer": "7"},
    {"question": "What is 3 + 4?", "answer": "7", "steps": ["3 + 4 = 7.", "The answer is 7."]},
    {"question": "What is 2 * 5?", "answer": "10", "steps": ["2 * 5 = 12.", "So 12.", "The answer is 12."]},
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny chat policy; vLLM's CPU attention needs head_dim >= 32 (the tiny default is 16)."""
    return make_tiny_lm(
        "qwen2",
        tmp_path_factory.mktemp("vllm-policy") / "policy",
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=256,
    )


@pytest.fixture(scope="module")
def server(policy, tmp_path_factory):
    """`python -m vllm.entrypoints.openai.api_server` on the policy, on 127.0.0.1: its URL."""
    missing = _vllm_missing()
    if missing:
        pytest.skip(missing)
    port = _free_port()
    command = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(policy),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--max-model-len",
        "512",
        *CPU_ARGS,
    ]
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    with running_vllm(command, port, log) as (url, _):
        yield url


def _server_counts(url: str) -> dict[str, float]:
    """The server's own token and request counters (Prometheus `/metrics`)."""
    names = (
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:request_success_total",
        "vllm:prefix_cache_hits_total",
    )
    counts = dict.fromkeys(names, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in counts:
            counts[name] += float(line.rsplit(" ", 1)[1])
    return counts


def _config(tmp_path, questions, policy, url, out) -> AnnotateConfig:
    return AnnotateConfig(
        str(questions),
        str(tmp_path / out),
        policy=str(policy),
        backend="vllm-server",
        vllm_url=url,
        num_rollouts=2,
        num_mc=2,
        max_new_tokens=24,
        temperature=1.0,
        # longer than one KV block (vLLM's prefix cache reuses whole blocks, 128 tokens on CPU)
        instruction="Answer step by step, one step a paragraph. " * 8,
        progress=False,
    )


def test_annotate_over_a_vllm_server(tmp_path, policy, server):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    before = _server_counts(server)
    result = run_annotation(_config(tmp_path, questions, policy, server, "a"))
    after = _server_counts(server)

    corpus = [json.loads(line) for line in (result.annotations_dir / "q.jsonl").read_text().splitlines()]
    assert [row["rollout_index"] for row in corpus] == [0, 1, 0, 0]
    assert corpus[2]["response"] == "3 + 4 = 7.\n\nThe answer is 7."
    assert [len(row["steps_with_score"]) for row in corpus[2:]] == [2, 3]
    assert all(row["policy_model"] == str(policy) and row["num_mc_sequences"] == 2 for row in corpus)
    dataset = load_visualprm400k(result.output_dir)
    # the given solutions are valid rows (a random policy's own rollouts are noise the loader may flag)
    assert dataset["invalid_reason"][2:] == [""] * 2 and len(dataset) == 4
    assert dataset["mc_scores"][2:] == [[step["score"] for step in row["steps_with_score"]] for row in corpus[2:]]

    # the counted cost is the server's: each generated and prompt token, and one request per continuation
    cost = result.cost
    assert cost["generated_tokens"] > 0
    assert cost["generated_tokens"] == after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert cost["prompt_tokens"] == after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    sent = after["vllm:request_success_total"] - before["vllm:request_success_total"]
    assert 0 < sent <= cost["rollouts"] + cost["continuations"]  # a prefix that fills the budget sends nothing
    # the K continuations of a prefix and the prefixes of one response share the prompt: the prefix cache hits
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    assert cost["cached_prompt_tokens"] == hits
    assert 0 < cost["cached_prompt_tokens"] < cost["prompt_tokens"]

    # seeded requests: the same configuration in another directory writes the same bytes (on a warm cache)
    again = run_annotation(_config(tmp_path, questions, policy, server, "b"))
    assert (again.annotations_dir / "q.jsonl").read_bytes() == (result.annotations_dir / "q.jsonl").read_bytes()
    assert again.cost["generated_tokens"] == cost["generated_tokens"]
    assert again.cost["cached_prompt_tokens"] > cost["cached_prompt_tokens"]


def test_cli_needs_the_url_and_names_an_unreachable_server(tmp_path, policy, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(ROWS[1]) + "\n")
    command = ["annotate", "--questions", str(questions), "--policy", str(policy), "--backend", "vllm-server"]
    assert main([*command, "--output-dir", str(tmp_path / "a")]) == 2
    assert "the vllm-server backend needs the server's URL (--vllm-url http://HOST:PORT)" in capsys.readouterr().err

    url = f"http://127.0.0.1:{_free_port()}"
    assert main([*command, "--vllm-url", url, "--output-dir", str(tmp_path / "b"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"vLLM server {url}/v1/completions failed on request " in error and "ConnectError" in error
