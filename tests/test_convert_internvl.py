"""`convert_internvl` on tiny checkpoints written in the remote-code layout of InternVL2.5 (`InternVLChatModel`).

The expected outputs come from independent implementations written here from the published remote code
(`modeling_internlm2.py`, `modeling_intern_vit.py`, `modeling_internvl_chat.py`), not from the converter: InternLM2's
attention unpacks `wqkv` with its own `rearrange`, InternViT splits `qkv` with its own `reshape(B, N, 3, H, D)`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from bis_prm import convert_internvl, load_prm
from bis_prm.model.convert_internvl import InternVLConversionError
from bis_prm.testing import make_remote_internvl

# ---- independent reference implementations, from the remote code's definitions ----


def rms_norm(x, weight, eps):
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(llm: dict, seq_len: int, head_dim: int):
    """InternLM2RotaryEmbedding / InternLM2DynamicNTKScalingRotaryEmbedding / Qwen2's default rotary."""
    base = llm["rope_theta"]
    scaling = llm.get("rope_scaling")
    if scaling and scaling["type"] == "dynamic" and seq_len > llm["max_position_embeddings"]:
        factor = scaling["factor"]
        base = base * ((factor * seq_len / llm["max_position_embeddings"]) - (factor - 1)) ** (
            head_dim / (head_dim - 2)
        )
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    t = torch.arange(seq_len).float()
    if scaling and scaling["type"] == "linear":
        t = t / scaling["factor"]
    emb = torch.cat([torch.outer(t, inv_freq)] * 2, dim=-1)
    return emb.cos(), emb.sin()


def remote_lm_logits(config: dict, w: dict, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """InternLM2ForCausalLM (or Qwen2ForCausalLM) forward on `inputs_embeds` [batch, seq, hidden]."""
    llm = config["llm_config"]
    internlm2 = llm["architectures"] == ["InternLM2ForCausalLM"]
    heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
    groups, head_dim = heads // kv_heads, llm["hidden_size"] // heads
    eps = llm["rms_norm_eps"]
    batch, seq, _ = inputs_embeds.shape
    cos, sin = rotary(llm, seq, head_dim)
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    x = inputs_embeds
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        h = rms_norm(x, w[p + ("attention_norm.weight" if internlm2 else "input_layernorm.weight")], eps)
        if internlm2:
            qkv = h @ w[p + "attention.wqkv.weight"].T + w.get(p + "attention.wqkv.bias", 0)
            qkv = rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + groups, d=head_dim)
            q = rearrange(qkv[..., :groups, :], "b q h gs d -> b q (h gs) d")
            k, v = qkv[..., -2, :], qkv[..., -1, :]
        else:
            q, k, v = (
                (h @ w[p + f"self_attn.{n}_proj.weight"].T + w[p + f"self_attn.{n}_proj.bias"]).view(
                    batch, seq, -1, head_dim
                )
                for n in "qkv"
            )
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        attention = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(head_dim) + causal, dim=-1) @ v
        attention = attention.transpose(1, 2).reshape(batch, seq, heads * head_dim)
        x = x + attention @ w[p + ("attention.wo.weight" if internlm2 else "self_attn.o_proj.weight")].T
        x = x + w.get(p + "attention.wo.bias", 0)
        h = rms_norm(x, w[p + ("ffn_norm.weight" if internlm2 else "post_attention_layernorm.weight")], eps)
        if internlm2:
            gate, up, down = (w[p + f"feed_forward.{n}.weight"] for n in ("w1", "w3", "w2"))
        else:
            gate, up, down = (w[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        x = x + (torch.nn.functional.silu(h @ gate.T) * (h @ up.T)) @ down.T
    x = rms_norm(x, w["language_model.model.norm.weight"], eps)
    return x @ w["language_model.output.weight" if internlm2 else "language_model.lm_head.weight"].T


def remote_embeddings(config: dict, w: dict, input_ids: torch.Tensor) -> torch.Tensor:
    internlm2 = config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    return w[
        "language_model.model.tok_embeddings.weight" if internlm2 else "language_model.model.embed_tokens.weight"
    ][input_ids]


def remote_extract_feature(config: dict, w: dict, pixel_values: torch.Tensor) -> torch.Tensor:
    """InternVLChatModel.extract_feature: InternViT (naive attention), drop CLS, pixel shuffle v2, mlp1."""
    vision = config["vision_config"]
    dim, heads, eps = vision["hidden_size"], vision["num_attention_heads"], vision["layer_norm_eps"]

    def norm(x, prefix):
        if vision["norm_type"] == "rms_norm":
            return rms_norm(x, w[prefix + ".weight"], eps)
        return torch.nn.functional.layer_norm(x, (dim,), w[prefix + ".weight"], w[prefix + ".bias"], eps)

    patches = torch.nn.functional.conv2d(
        pixel_values,
        w["vision_model.embeddings.patch_embedding.weight"],
        w["vision_model.embeddings.patch_embedding.bias"],
        stride=vision["patch_size"],
    )
    batch = patches.shape[0]
    x = torch.cat(
        [w["vision_model.embeddings.class_embedding"].expand(batch, 1, -1), patches.flatten(2).transpose(1, 2)], dim=1
    )
    x = x + w["vision_model.embeddings.position_embedding"]
    states = [x]  # InternVisionEncoder's hidden_states: the embeddings, then every layer's output
    for i in range(vision["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = norm(x, p + "norm1")
        B, N, C = h.shape
        qkv = h @ w[p + "attn.qkv.weight"].T + (w[p + "attn.qkv.bias"] if vision["qkv_bias"] else 0)
        q, k, v = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if vision["qk_normalization"]:
            q = rms_norm(q.transpose(1, 2).flatten(-2, -1), w[p + "attn.q_norm.weight"], eps)
            q = q.view(B, N, heads, C // heads).transpose(1, 2)
            k = rms_norm(k.transpose(1, 2).flatten(-2, -1), w[p + "attn.k_norm.weight"], eps)
            k = k.view(B, N, heads, C // heads).transpose(1, 2)
        attention = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        attention = attention.transpose(1, 2).reshape(B, N, C) @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        x = x + attention * w[p + "ls1"]
        h = norm(x, p + "norm2")
        h = torch.nn.functional.gelu(h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        x = x + (h @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]) * w[p + "ls2"]
        states.append(x)
    x = states[config["select_layer"]][:, 1:, :]
    side = int(x.shape[1] ** 0.5)
    x = x.reshape(batch, side, side, -1)
    scale = config["downsample_ratio"]
    n, width, height, c = x.shape
    x = x.view(n, width, int(height * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(height * scale), int(width * scale), int(c / scale**2)).permute(0, 2, 1, 3).contiguous()
    x = x.reshape(batch, -1, x.shape[-1])
    x = torch.nn.functional.layer_norm(x, (x.shape[-1],), w["mlp1.0.weight"], w["mlp1.0.bias"], 1e-5)
    x = torch.nn.functional.gelu(x @ w["mlp1.1.weight"].T + w["mlp1.1.bias"])
    return x @ w["mlp1.3.weight"].T + w["mlp1.3.bias"]


# ---- tests ----


@pytest.fixture(scope="module")
def internlm2_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("internlm2")
    config, weights = make_remote_internvl(root / "remote", llm="internlm2")
    out = convert_internvl(root / "remote", root / "hf", max_shard_size=200_000)
    return root, config, weights, out


@pytest.mark.parametrize(
    "llm_arch,vision_6b", [("internlm2", False), ("internlm2_bias_linear_rope", False), ("qwen2", True)]
)
def test_logits_equal_the_remote_definition(tmp_path, llm_arch, vision_6b, internlm2_checkpoint):
    if llm_arch == "internlm2":
        _, config, weights, out = internlm2_checkpoint
    elif llm_arch == "internlm2_bias_linear_rope":
        # InternLM2's `bias` (on wqkv, unpacked like its weight, and wo) and linear rotary scaling
        config, weights = make_remote_internvl(
            tmp_path / "remote", llm="internlm2", shards=1, bias=True, rope_scaling={"type": "linear", "factor": 2.0}
        )
        out = convert_internvl(tmp_path / "remote", tmp_path / "hf")
    else:
        # InternViT-6B, and features from its last-but-one layer (`select_layer: -2`)
        config, weights = make_remote_internvl(tmp_path / "remote", llm_arch, vision_6b=vision_6b, select_layer=-2)
        out = convert_internvl(tmp_path / "remote", tmp_path / "hf")
    model, info = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model.eval()
    expected_arch = "qwen2" if llm_arch == "qwen2" else "llama"
    assert model.config.text_config.model_type == expected_arch
    vocab = config["llm_config"]["vocab_size"]

    # text only: 16 tokens, beyond the InternLM2 checkpoint's 12 positions, so its dynamic NTK rotary acts
    input_ids = torch.randint(3, vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[..., :vocab]
        expected = remote_lm_logits(config, weights, remote_embeddings(config, weights, input_ids))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)

    # the vision path: InternViT + pixel shuffle + mlp1, then the image features in place of <IMG_CONTEXT>
    processor = AutoProcessor.from_pretrained(out)
    side = config["force_image_size"]
    pixel_values = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixel_values).pooler_output
        expected_features = remote_extract_feature(config, weights, pixel_values)
    torch.testing.assert_close(features, expected_features, atol=1e-5, rtol=1e-5)
    context = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    image_ids = torch.full((1, 3 * model.config.image_seq_length), context)
    input_ids = torch.cat([input_ids[:1, :3], image_ids, input_ids[:1, 3:9]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits[..., :vocab]
        embeds = remote_embeddings(config, weights, input_ids).clone()
        embeds[input_ids == context] = expected_features.reshape(-1, expected_features.shape[-1])
        expected = remote_lm_logits(config, weights, embeds)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("add_dummy_prefix", [True, False])
def test_internlm2_tokenizer_matches_sentencepiece(tmp_path, internlm2_checkpoint, add_dummy_prefix):
    """The fast tokenizer splits like InternLM2Tokenizer: sentencepiece on the text between special tokens."""
    import sentencepiece as spm

    if add_dummy_prefix:
        root, _, _, out = internlm2_checkpoint
    else:
        root = tmp_path
        make_remote_internvl(root / "remote", llm="internlm2", shards=1, add_dummy_prefix=False)
        out = convert_internvl(root / "remote", root / "hf")
    sp = spm.SentencePieceProcessor(model_file=str(root / "remote" / "tokenizer.model"))
    added = {
        t["content"]: int(i)
        for i, t in json.loads((root / "remote" / "tokenizer_config.json").read_text())["added_tokens_decoder"].items()
    }
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    text = "Question: How many red circles?<|im_end|>\n<|im_start|>assistant\n<img><IMG_CONTEXT></img>  12 * 3 = 36.ü"
    pieces, expected = text, [added["<s>"]]
    for special in ("<|im_end|>", "<|im_start|>", "<img>", "<IMG_CONTEXT>", "</img>"):
        before, pieces = pieces.split(special, 1)
        expected += (sp.encode(before) if before else []) + [added[special]]
    expected += sp.encode(pieces)
    assert tokenizer(text).input_ids == expected
    plain = "How many red circles?  12 * 3 = 36.ü"
    assert tokenizer.decode(tokenizer(plain).input_ids, skip_special_tokens=True) == plain
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == added["<IMG_CONTEXT>"]


def test_processor_tiles_and_renders_the_chat_template(internlm2_checkpoint):
    from PIL import Image

    _, config, _, out = internlm2_checkpoint
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.max_patches == config["max_dynamic_patch"]
    assert processor.image_seq_length == 4  # (28 / 7)^2 * 0.5^2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    system = (
        "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
    )
    assert text == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\nHow many?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # a 2:1 image: 2 tiles + the thumbnail, each 4 tokens, inside <img>...</img>
    inputs = processor(images=[Image.new("RGB", (56, 28), "red")], text=[text], return_tensors="pt")
    assert inputs["pixel_values"].shape == (3, 3, 28, 28)
    context = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert int((inputs["input_ids"] == context).sum()) == 12


def test_load_prm_on_the_converted_model(internlm2_checkpoint):
    _, config, weights, out = internlm2_checkpoint
    model, processor = load_prm(out, head="yes_no")
    assert type(model).__name__ == "InternVLForTokenClassification"
    step_id = processor.tokenizer.convert_tokens_to_ids("<prm>")
    assert model.config.step_token_id == step_id
    # the yes_no head starts from the converted LM head's rows ([negative, positive] = [No, Yes])
    (no_id,), (yes_id,) = (processor.tokenizer(t, add_special_tokens=False).input_ids for t in ("No", "Yes"))
    torch.testing.assert_close(model.score.weight.data, weights["language_model.output.weight"][[no_id, yes_id]])
    # the PRM scores a rollout with an image through the converted processor (2 tiles + thumbnail)
    from PIL import Image

    from bis_prm import score_steps

    rollout = {"image": Image.new("RGB", (56, 28), "blue"), "question": "How many?", "steps": ["I count 3.", "So 3."]}
    (scores,) = score_steps(model, processor, [rollout])
    assert len(scores) == 2 and all(0.0 < score < 1.0 for score in scores)
    # scoring it again alone in a batch with a text-only rollout gives the same numbers
    text_only = {"question": "What is 3 + 4?", "steps": ["3 + 4 = 7."]}
    batched = score_steps(model, processor, [rollout, text_only])
    torch.testing.assert_close(torch.tensor(batched[0]), torch.tensor(scores), atol=1e-5, rtol=0)


@torch.no_grad()
def test_the_visualprm_scorer_scores_a_converted_checkpoint(tmp_path):
    # VisualPRM-8B is an InternVL2.5-8B: once converted, the "+"/"-" scorer reads it in one pass as VisualPRM itself
    # does turn by turn. Its InternLM2.5 has 32k positions: its dynamic NTK rotary does not act on a conversation
    # (the other tests' 12-position checkpoint would rescale the rotary by the length of the whole input).
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from bis_prm.model.scorers import VisualPRMScorer, load_scorer
    from tests.oracles.reference_visualprm import visualprm_turn_by_turn

    make_remote_internvl(tmp_path / "remote", llm="internlm2", max_position_embeddings=32768)
    out = convert_internvl(tmp_path / "remote", tmp_path / "VisualPRM-8B-hf")
    scorer = load_scorer(out, scorer="visualprm")
    assert type(scorer) is VisualPRMScorer
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    rows = [
        {"image": Image.new("RGB", (56, 28), "blue"), "question": "How many?", "steps": ["I count 3.", "So 3."]},
        {"image": None, "question": "What is 3 + 4?", "steps": ["3 + 4 = 7."]},
    ]
    for row, scores in zip(rows, scorer.score_rows(rows), strict=True):
        assert scores == pytest.approx(visualprm_turn_by_turn(model, processor, row), abs=1e-5)


def test_sharded_output_is_streamed(internlm2_checkpoint):
    _, _, weights, out = internlm2_checkpoint
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / shard).is_file() for shard in shards)
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no staging folder left
    # vision, projector and LM weights all land where transformers expects them
    assert "model.vision_tower.encoder.layer.1.attention.q_proj.bias" in index["weight_map"]
    assert "model.multi_modal_projector.linear_2.weight" in index["weight_map"]
    assert "model.language_model.layers.1.self_attn.k_proj.weight" in index["weight_map"]


def _broken(tmp_path: Path, change) -> Path:
    config, weights = make_remote_internvl(tmp_path / "remote", "qwen2", shards=1)
    change(weights)
    (tmp_path / "remote" / "model.safetensors.index.json").unlink()
    for file in (tmp_path / "remote").glob("*.safetensors"):
        file.unlink()
    save_file(weights, tmp_path / "remote" / "model.safetensors")
    return tmp_path / "remote"


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda w: w.__setitem__("vision_model.encoder.layers.0.attn.extra.weight", torch.zeros(2)),
            "unknown key.*vision_model.encoder.layers.0.attn.extra.weight",
        ),
        (lambda w: w.__setitem__("mlp1.1.weight", torch.zeros(64, 100)), r"mlp1.1.weight \(\[64, 100\]"),
        (lambda w: w.pop("language_model.model.norm.weight"), "lacks 1 weight.*model.language_model.norm.weight"),
    ],
    ids=["unknown_key", "wrong_shape", "missing"],
)
def test_broken_checkpoint_is_refused_without_leaving_files(tmp_path, change, message):
    source = _broken(tmp_path, change)
    with pytest.raises(InternVLConversionError, match=message):
        convert_internvl(source, tmp_path / "out" / "hf")
    assert not (tmp_path / "out" / "hf").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_packed_wqkv_of_the_wrong_size_is_refused(tmp_path):
    config, weights = make_remote_internvl(tmp_path / "remote", llm="internlm2", shards=1)
    config["llm_config"]["num_key_value_heads"] = 4  # the weights pack 2 key/value heads
    (tmp_path / "remote" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(InternVLConversionError, match=r"attention.wqkv.weight has shape \[128, 64\]"):
        convert_internvl(tmp_path / "remote", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli(tmp_path, capsys):
    from bis_prm.cli import main

    make_remote_internvl(tmp_path / "remote", "qwen2", shards=1)
    assert main(["convert-internvl", str(tmp_path / "remote"), str(tmp_path / "hf"), "--max-shard-size", "50KB"]) == 0
    assert "Converted" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    # an existing output is refused before any work, a broken checkpoint in one line naming the problem
    assert main(["convert-internvl", str(tmp_path / "remote"), str(tmp_path / "hf")]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "remote" / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"]}')
    assert main(["convert-internvl", str(tmp_path / "remote"), str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not an InternVLChatModel" in error
    assert not (tmp_path / "other").exists()


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    make_remote_internvl(tmp_path / "remote", "qwen2", shards=1)
    real_save_file, calls = safetensors.torch.save_file, []

    def fail_on_the_second_shard(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", fail_on_the_second_shard)
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="No space left"):
        convert_internvl(tmp_path / "remote", tmp_path / "out" / "hf", max_shard_size="50KB")
    assert len(calls) == 2  # the first shard was written, into the staging folder, then removed with it
    assert list((tmp_path / "out").iterdir()) == []


def test_prm_trainer_trains_the_converted_model(tmp_path, internlm2_checkpoint):
    from bis_prm import PRMTrainer
    from tests.utils import prm_dataset, tiny_config, write_images

    _, _, weights, out = internlm2_checkpoint
    trainer = PRMTrainer(
        str(out),
        args=tiny_config(tmp_path / "run", max_steps=2, head="yes_no"),
        train_dataset=prm_dataset(write_images(tmp_path / "images"), num_rows=4),
    )
    before = trainer.model.score.weight.detach().clone()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert not torch.equal(trainer.model.score.weight.detach(), before)
    # the vision tower is frozen by default, so it is exactly the converted InternViT
    embedding = trainer.model.model.vision_tower.embeddings.cls_token.detach()
    torch.testing.assert_close(embedding, weights["vision_model.embeddings.class_embedding"], atol=0, rtol=0)
