import os

import huggingface_hub
import pytest

from bis_prm.cli import main
from bis_prm.evaluation.metrics import VISUALPROCESSBENCH
from bis_prm.evaluation.metrics.publish import METRICS, publish_metric

REPO = "me/visualprocessbench"


def test_dry_run_writes_the_space_files(tmp_path, capsys):
    assert main(["publish-metric", "--repo-id", "me/vpb", "--dry-run", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "app.py", "requirements.txt", "vpb.py"]
    assert (tmp_path / "vpb.py").read_text() == open(VISUALPROCESSBENCH).read()  # evaluate fetches <name>.py
    assert (tmp_path / "README.md").read_text().startswith("---\ntitle: VisualProcessBench\n")
    app = (tmp_path / "app.py").read_text()
    assert 'evaluate.load("me/vpb")' in app and "launch_gradio_widget(module)" in app
    with pytest.raises(SystemExit) as exit_info:
        main(["publish-metric", "--repo-id", "vpb", "--dry-run", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "bis-prm publish-metric: error: argument --repo-id: expected a Hub repo id <namespace>/<name>, got 'vpb'\n"
    )


@pytest.mark.parametrize("metric", list(METRICS))  # a metric the CLI does not offer fails here
def test_every_metric_can_be_published_and_its_space_script_loads(metric, tmp_path, capsys):
    import evaluate

    space = tmp_path / "space"
    assert main(["publish-metric", "--repo-id", "me/pb", "--metric", metric, "--dry-run", str(space)]) == 0
    assert f"Space files of the {metric} metric for me/pb" in capsys.readouterr().out
    assert (space / "pb.py").read_text() == open(METRICS[metric]).read()
    title = {"visualprocessbench": "VisualProcessBench", "processbench": "ProcessBench", "prmbench": "PRMBench"}
    assert (space / "README.md").read_text().startswith(f"---\ntitle: {title[metric]}\n")
    # what evaluate.load("me/pb") runs once it has fetched pb.py from the Space: the script alone, no package beside it
    loaded = evaluate.load(str(space / "pb.py"))
    assert loaded.name == metric and loaded.features == evaluate.load(METRICS[metric]).features


def test_publishing_checks_the_login_before_any_work(monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["publish-metric", "--repo-id", "me/vpb"]) == 2
    assert capsys.readouterr().err == (
        "bis-prm publish-metric: error: pushing to me/vpb needs a Hub login: run `hf auth login` or set HF_TOKEN\n"
    )

    class FakeApi:
        def __init__(self, token=None):
            pass

        def whoami(self):
            return {"name": "someone", "orgs": [{"name": "lab"}]}

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_xxx")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["publish-metric", "--repo-id", "me/vpb"]) == 2
    assert (
        "the Hub user 'someone' cannot write to 'me/vpb' (may write to: ['lab', 'someone'])" in capsys.readouterr().err
    )


def test_publish_calls_the_hub_api(monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/spaces/{repo_id}"

        def upload_folder(self, **kwargs):

            calls.append(
                ("upload_folder", kwargs["repo_id"], kwargs["repo_type"], sorted(os.listdir(kwargs["folder_path"])))
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert (
        publish_metric("me/visualprocessbench", private=True) == "https://huggingface.co/spaces/me/visualprocessbench"
    )
    assert calls == [
        ("init", None),
        (
            "create_repo",
            "me/visualprocessbench",
            {"repo_type": "space", "space_sdk": "gradio", "private": True, "exist_ok": True},
        ),
        (
            "upload_folder",
            "me/visualprocessbench",
            "space",
            ["README.md", "app.py", "requirements.txt", "visualprocessbench.py"],
        ),
    ]
