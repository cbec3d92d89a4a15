import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from bis_prm.cli import main
from bis_prm.data.sample import SAMPLE_SOURCES, SampleConfig, make_sample

RAW_KEYS = {
    "image",
    "question",
    "question_orig",
    "answer",
    "response",
    "num_mc_sequences",
    "steps_with_score",
}
STEP_KEYS = {"step", "score", "num_mc_correct", "num_mc_total"}
BENCHMARK_KEYS = {"image", "question", "answer", "response", "policy_model", "data_source"}
COLORS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (240, 220, 0)}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("sample"), seed=0)


def test_corpus_layout(sample):
    files = sorted(sample.annotations_dir.glob("*.jsonl"))
    assert [path.stem for path in files] == sorted(SAMPLE_SOURCES)
    list_images = 0
    for path in files:
        rows = _read_jsonl(path)
        assert len(rows) == 800
        for index, row in enumerate(rows):
            where = f"{path.name}:{index}"
            assert set(row) == RAW_KEYS, where
            images = row["image"] if isinstance(row["image"], list) else [row["image"]]
            list_images += isinstance(row["image"], list)
            for image in images:
                assert image.startswith(f"VisualPRM400K-v1.1-Raw/{path.stem}/"), where
                assert (sample.corpus_root / image).is_file(), where
            assert row["question"].count("<image>") == len(images), where
            assert row["question_orig"] in row["question"]
            assert row["num_mc_sequences"] == 16
            steps = row["steps_with_score"]
            assert 3 <= len(steps) <= 7, where
            assert row["response"] == "\n\n".join(step["step"] for step in steps), where
            for step in steps:
                assert set(step) == STEP_KEYS, where
                assert step["num_mc_total"] == 16 and 0 <= step["num_mc_correct"] <= 16
                assert step["score"] == step["num_mc_correct"] / 16, where
    assert list_images > 0  # the digits source shows some rows as two images


def test_benchmark_layout(sample):
    rows = _read_jsonl(sample.benchmark_file)
    assert len(rows) == 400
    assert {row["data_source"] for row in rows} == set(SAMPLE_SOURCES)
    assert sum(len(row["image"]) == 2 for row in rows) > 0
    for index, row in enumerate(rows):
        assert set(row) == BENCHMARK_KEYS, index
        assert isinstance(row["image"], list)
        for image in row["image"]:
            assert image.startswith(f"images/{row['data_source']}/")
            assert (sample.benchmark_dir / image).is_file()
        steps, labels = row["response"]["steps"], row["response"]["process_correctness"]
        assert set(row["response"]) == {"steps", "process_correctness"}
        assert len(steps) == len(labels) and all(isinstance(step, str) for step in steps)
        assert set(labels) <= {1, 0, -1}
        # the last step states the true answer whenever it is labelled correct
        if labels[-1] == 1:
            assert steps[-1] == f"The answer is {row['answer']}.", index


def test_labels_agree_with_images(sample):
    """A colour claim is labelled correct exactly when it names the colour drawn in the image."""
    checked = 0
    for row in _read_jsonl(sample.benchmark_file):
        if row["data_source"] != "colors":
            continue
        image = Image.open(sample.benchmark_dir / row["image"][0]).convert("RGB")
        for step, label in zip(row["response"]["steps"], row["response"]["process_correctness"], strict=True):
            match = re.fullmatch(r"The shape is (\w+)\.", step)
            if match:
                pixel = image.getpixel((image.width // 2, image.height // 2))
                assert (pixel == COLORS[match[1]]) == (label == 1), (row["image"], step, label)
                checked += 1
    assert checked > 50


def test_misread_bar_is_wrong(sample):
    """Reading the bar the question did not ask for is an error, even though the height read is right."""
    found = 0
    for row in _read_jsonl(sample.benchmark_file):
        if row["data_source"] != "bar_charts":
            continue
        asked = re.findall(r"the (\w+) bar", row["question"])
        for step, label in zip(row["response"]["steps"], row["response"]["process_correctness"], strict=True):
            match = re.fullmatch(r"The (\w+) bar is (\d) high\.", step)
            if match and match[1] not in asked:
                assert label == -1, (row["question"], step)
                found += 1
    assert found > 0


def test_statistics_within_bands(sample):
    corpus, benchmark = sample.statistics["corpus"], sample.statistics["benchmark"]
    assert corpus["rollouts"] == 4000 and corpus["sources"] == dict.fromkeys(SAMPLE_SOURCES, 800)
    # few wrong steps and few mixed rollouts, like the real corpus; pseudo-positives and unreliable positives exist
    assert 0.03 <= corpus["wrong_steps"] / corpus["steps"] <= 0.12
    assert 0.05 <= corpus["mixed_rollouts"] / corpus["rollouts"] <= 0.2
    assert corpus["pseudo_positive_steps"] > 20
    assert corpus["low_reliability_positive_steps"] > 100
    labels = benchmark["labels"]
    assert 0.35 <= labels["-1"] / sum(labels.values()) <= 0.45
    assert labels["0"] > 0

    # the statistics are those of the files
    rows = [row for path in sample.annotations_dir.glob("*.jsonl") for row in _read_jsonl(path)]
    positive = [[step["num_mc_correct"] > 0 for step in row["steps_with_score"]] for row in rows]
    assert corpus["negative_steps"] == sum(flags.count(False) for flags in positive)
    assert corpus["mixed_rollouts"] == sum(any(flags) and not all(flags) for flags in positive)
    assert json.loads((sample.root / "statistics.json").read_text()) == json.loads(json.dumps(sample.statistics))


def test_deterministic_from_seed(sample, tmp_path):
    again = make_sample(tmp_path / "again", seed=0)
    assert _tree_digest(again.root) == _tree_digest(sample.root)
    other = make_sample(tmp_path / "other", seed=1, num_rollouts=4000)
    assert (other.annotations_dir / "colors.jsonl").read_bytes() != (
        sample.annotations_dir / "colors.jsonl"
    ).read_bytes()
    assert other.benchmark_file.read_bytes() != sample.benchmark_file.read_bytes()


def test_config_validation():
    with pytest.raises(ValueError, match="Unknown sample source"):
        SampleConfig(sources=("colors", "maps"))
    with pytest.raises(ValueError, match="at least the number of sources"):
        SampleConfig(num_rollouts=3)
    with pytest.raises(ValueError, match="corpus_error_rate"):
        SampleConfig(corpus_error_rate=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        SampleConfig(read_error_weight=-1.0)


def test_cli_make_sample(tmp_path, capsys):
    code = main(["make-sample", str(tmp_path), "--seed", "3", "--num-rollouts", "50", "--num-benchmark-rows", "10"])
    assert code == 0
    out = capsys.readouterr().out
    assert "annotations/colors.jsonl: 10 rollouts" in out and "data_source digits: 2 rows" in out
    assert sum(len(_read_jsonl(path)) for path in (tmp_path / "corpus" / "annotations").glob("*.jsonl")) == 50
    assert len(_read_jsonl(tmp_path / "benchmark" / "test.jsonl")) == 10

    assert main(["make-sample", str(tmp_path / "bad"), "--num-rollouts", "2"]) == 2
    assert "at least the number of sources" in capsys.readouterr().err
