import datasets
import pytest
from huggingface_hub import CommitInfo, HfApi

from bis_prm.data.dataset_card import build_dataset_card, push_subset_to_hub

REPORT = {
    "sources": {
        "ai2d": {"read": 10, "valid": 9, "kept": 1, "dropped": {"broken_json": 1, "not_selected": 8}},
        "mmmu": {"read": 5, "valid": 5, "kept": 1, "dropped": {"broken_json": 0, "not_selected": 4}},
    },
    "total": {"read": 15, "valid": 14, "kept": 2, "dropped": {"broken_json": 1, "not_selected": 12}},
    "stats": {
        name: {
            "rollouts": n,
            "share_mixed": 0.5,
            "mean_p_pos": 0.75,
            "mean_reliability": 0.8,
            "mean_bis": 0.3,
            "positive_steps": 3 * n,
            "negative_steps": n,
        }
        for name, n in (("all", 14), ("kept", 2))
    },
    "params": {
        "corpus": "OpenGVLab/VisualPRM400K-v1.1-Raw",
        "revision": "abc123",
        "method": "bis",
        "ratio": 0.1,
        "alpha": 0.2,
        "tau": 0.0,
        "seed": 0,
    },
}
COMMAND = "bis-prm select --dataset OpenGVLab/VisualPRM400K-v1.1-Raw --ratio 0.1 --alpha 0.2 --push-to-hub me/bis10"


def test_card_records_how_the_subset_was_made():
    card = build_dataset_card(REPORT, command=COMMAND)
    assert card.data.source_datasets == ["OpenGVLab/VisualPRM400K-v1.1-Raw"]
    assert card.data.configs[0]["data_files"][0]["path"] == "data/train-*"
    for line in [
        "(revision `abc123`)",
        "| method | `bis` |",
        "| ratio | 0.1 |",
        "| alpha | 0.2 |",
        "| tau | 0.0 |",
        "| seed | 0 |",
        COMMAND,
        "| ai2d | 10 | 9 | 1 |",
        "| **total** | **15** | **14** | **2** |",
        "Dropped before ranking: broken_json: 1.",
        "| kept | 2 | 0.5000 | 0.7500 | 0.8000 | 0.3000 | 6 | 2 |",
    ]:
        assert line in card.text


def test_push_uploads_parquet_and_card_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pushed, commits = {}, []

    def fake_push_to_hub(self, repo_id, **kwargs):
        # stands in for the Hub: the parquet shard push_to_hub would upload
        pushed.update(repo_id=repo_id, kwargs=kwargs)
        self.to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))

    def fake_create_commit(self, repo_id, operations, **kwargs):
        commits.append((repo_id, kwargs["repo_type"], {op.path_in_repo: op.path_or_fileobj for op in operations}))
        return CommitInfo(f"https://huggingface.co/datasets/{repo_id}/commit/{'1' * 40}", "msg", "", "1" * 40)

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_push_to_hub)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    prm = datasets.Dataset.from_dict(
        {"image": [["/a.png"]], "question": ["q"], "steps": [["s1", "s2"]], "labels": [[1.0, 0.0]], "source": ["x"]}
    )
    url = push_subset_to_hub(prm, "me/bis10", REPORT, command=COMMAND)
    assert url == "https://huggingface.co/datasets/me/bis10/commit/" + "1" * 40
    assert pushed["repo_id"] == "me/bis10" and "bis subset" in pushed["kwargs"]["commit_message"]
    assert datasets.Dataset.from_parquet(str(tmp_path / "train-00000-of-00001.parquet")).to_dict() == prm.to_dict()
    [(repo_id, repo_type, files)] = commits
    assert (repo_id, repo_type, list(files)) == ("me/bis10", "dataset", ["README.md"])
    assert files["README.md"].decode() == str(build_dataset_card(REPORT, command=COMMAND))


def test_embedding_casts_images(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    seen = {}
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo_id, **kw: seen.update(ds=self, **kw))
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: "url")
    prm = datasets.Dataset.from_dict({"image": [["a.png"]], "image_root": [str(tmp_path)], "labels": [[1.0]]})
    push_subset_to_hub(prm, "me/x", REPORT, embed_images=True)
    assert isinstance(seen["ds"].features["image"].feature, datasets.Image) and seen["embed_external_files"]
    assert seen["ds"][0]["image"][0].size == (4, 4) and "image_root" not in seen["ds"].column_names
    # without embedding, the local root means nothing on the Hub
    push_subset_to_hub(prm, "me/x", REPORT)
    assert seen["ds"]["image"] == [["a.png"]] and seen["ds"]["image_root"] == [None]
    with pytest.raises(KeyError):
        push_subset_to_hub(prm, "me/x", {"params": {}})
