import json

import pytest

from bis_prm.cli import main
from bis_prm.testing import make_corpus
from tests.oracles.reference_selection import reference_select
from tests.utils import DIRTY_LINES, write_dirty_corpus


def select(*args: str) -> int:
    return main(["select", *map(str, args)])


@pytest.fixture(scope="module")
def clean_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    annotations = make_corpus(root, num_sources=4, rollouts_per_source=90, seed=7, list_image_sources=2)
    # a blank line in the middle and at the end must not shift the selection
    path = annotations / "source_01.jsonl"
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join(lines[:40] + [""] + lines[40:]) + "\n", encoding="utf-8")
    return annotations


@pytest.mark.parametrize("ratio, alpha", [(0.1, 0.2), (0.25, 0.05)])
def test_internvl_output_is_byte_identical_to_the_reference(clean_corpus, tmp_path, ratio, alpha):
    assert reference_select(clean_corpus, tmp_path / "reference.jsonl", ratio, alpha) == 4 * int(90 * ratio)
    assert select("--annotations-dir", clean_corpus, "--ratio", ratio, "--alpha", alpha, "--format", "internvl",
                  "--output", tmp_path / "ours.jsonl") == 0  # fmt: skip
    assert (tmp_path / "ours.jsonl").read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


def test_deterministic_across_num_proc_and_runs(clean_corpus, tmp_path):
    outputs = []
    for run, num_proc in enumerate([1, 2, 1]):
        for fmt in ("internvl", "hf"):
            out = tmp_path / f"{run}_{fmt}.jsonl"
            args = ["--annotations-dir", clean_corpus, "--format", fmt, "--output", out, "--num-proc", num_proc]
            assert select(*args, "--method", "random", "--seed", 5) == 0
            outputs.append(out.read_bytes())
    assert outputs[0] == outputs[2] == outputs[4] and outputs[1] == outputs[3] == outputs[5]


def test_dirty_corpus(tmp_path, capsys):
    annotations = write_dirty_corpus(tmp_path)
    out, report_path = tmp_path / "full.jsonl", tmp_path / "report.json"
    assert select("--annotations-dir", annotations, "--method", "full", "--format", "internvl", "--output", out,
                  "--report", report_path, "--plot", tmp_path / "stats.png") == 0  # fmt: skip
    report = json.loads(report_path.read_text())
    n_valid = sum(reason == "" for _, reason in DIRTY_LINES)
    for source in ("dirty_0", "dirty_1"):
        counts = report["sources"][source]
        assert counts["read"] == sum(reason is not None for _, reason in DIRTY_LINES)
        assert counts["valid"] == counts["kept"] == n_valid
        assert counts["blank_lines"] == 3
        assert counts["dropped"]["missing_score"] == 4 and counts["dropped"]["broken_json"] == 2
    for counts in [*report["sources"].values(), report["total"]]:
        assert counts["kept"] + sum(counts["dropped"].values()) == counts["read"]
    # every valid rollout survives, in file order
    labels = [json.loads(line)["conversations"][1]["value"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert labels == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0, 0.0]] * 2 + [[1.0, 0.0], [1.0]]
    # the text-only rollout (`"image": []`) is written as it is, without image
    images = [json.loads(line)["image"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert images[1] == images[6] == []
    assert (tmp_path / "stats.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "dirty_0" in table and "missing_score=4" in table

    # invalid rollouts are excluded before ranking: with ratio 0.25, 1 of 5 valid per dirty source is kept
    assert select("--annotations-dir", annotations, "--ratio", 0.25, "--format", "internvl", "--output", out,
                  "--report", report_path) == 0  # fmt: skip
    assert json.loads(report_path.read_text())["total"]["kept"] == 3
    assert len(out.read_text().splitlines()) == 3


def test_bad_directories_exit_2(tmp_path, capsys):
    assert select("--annotations-dir", tmp_path / "nope", "--output", tmp_path / "o.jsonl") == 2
    assert "annotations directory not found" in capsys.readouterr().err
    assert select("--annotations-dir", tmp_path, "--output", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert "no *.jsonl" in err and len(err.strip().splitlines()) == 1


def test_help_explains_bis(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["select", "--help"])
    assert exit_info.value.code == 0
    assert "(p_pos * (1 - p_pos) + alpha) * R" in capsys.readouterr().out


def test_push_to_hub_gets_the_prm_subset_report_and_command(clean_corpus, tmp_path, monkeypatch):
    import huggingface_hub

    import bis_prm.data.dataset_card

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_x")
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self: {"name": "me", "orgs": []})
    calls = []
    monkeypatch.setattr(
        bis_prm.data.dataset_card, "push_subset_to_hub", lambda *args: calls.append(args) or "https://hub/commit"
    )
    out = tmp_path / "subset.parquet"
    assert select("--annotations-dir", clean_corpus, "--output", out, "--push-to-hub", "me/bis10") == 0
    [(prm, repo_id, report, command, embed_images, private)] = calls
    assert repo_id == "me/bis10" and not embed_images and not private
    assert len(prm) == report["total"]["kept"] == 4 * 9
    assert prm.column_names[:5] == ["image", "image_root", "question", "steps", "labels"]
    assert command.startswith(f"bis-prm select --annotations-dir {clean_corpus} --method bis --ratio 0.1 --alpha 0.2")
    assert command.endswith("--push-to-hub me/bis10")
