"""Publish a metric of bis_prm (`visualprocessbench`, `processbench`, `prmbench`) as a Hugging Face Space, loadable
with `evaluate.load("<user>/<name>")`.

evaluate loads a community metric `<user>/<name>` by downloading `<name>.py` from the Space `<user>/<name>`, so the
script is renamed after the repository.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bis_prm.evaluation.metrics import PRMBENCH, PROCESSBENCH, VISUALPROCESSBENCH

#: The metrics that can be published, by name: their scripts (each with its metric card beside it).
METRICS = {"visualprocessbench": VISUALPROCESSBENCH, "processbench": PROCESSBENCH, "prmbench": PRMBENCH}

REQUIREMENTS = "evaluate>=0.4.6\ndatasets\nnumpy\n"

APP = """import evaluate
from evaluate.utils import launch_gradio_widget


module = evaluate.load("{repo_id}")
launch_gradio_widget(module)
"""


def prepare_space(repo_id: str, folder: str | os.PathLike, metric: str = "visualprocessbench") -> Path:
    """
    Write the Space's files to `folder`: `<name>.py` (the metric), `README.md` (Space YAML header + metric card),
    `app.py` (evaluate's Gradio widget) and `requirements.txt`.

    Args:
        repo_id (`str`): the Space, `"<user>/<name>"`.
        folder (`str` or `os.PathLike`): output folder (created if needed).
        metric (`str`, *optional*, defaults to `"visualprocessbench"`): one of `METRICS`.

    Returns:
        `Path`: the folder.

    Example:
        >>> sorted(p.name for p in prepare_space("me/visualprocessbench", "/tmp/space").iterdir())
        ['README.md', 'app.py', 'requirements.txt', 'visualprocessbench.py']
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like '<user>/<name>', got {repo_id!r}.")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}.")
    name = repo_id.split("/")[1]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    script = Path(METRICS[metric])
    shutil.copyfile(script, folder / f"{name}.py")
    shutil.copyfile(script.parent / "README.md", folder / "README.md")
    (folder / "app.py").write_text(APP.format(repo_id=repo_id), encoding="utf-8")
    (folder / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
    return folder


def publish_metric(
    repo_id: str, private: bool = False, token: str | None = None, metric: str = "visualprocessbench"
) -> str:
    """
    Create (or update) the Space `repo_id` with a metric, so that `evaluate.load(repo_id)` works anywhere.

    Args:
        repo_id (`str`): `"<user>/<name>"`.
        private (`bool`, *optional*, defaults to `False`): create a private Space.
        token (`str`, *optional*): a Hub token with write access; defaults to the logged-in one.
        metric (`str`, *optional*, defaults to `"visualprocessbench"`): one of `METRICS`.

    Returns:
        `str`: the Space's URL.

    Example:
        >>> publish_metric("me/visualprocessbench")  # doctest: +SKIP
        'https://huggingface.co/spaces/me/visualprocessbench'
    """
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as folder:
        prepare_space(repo_id, folder, metric)  # a bad name fails before anything is created on the Hub
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        message = f"Upload {metric} metric"
        api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder, commit_message=message)
    return str(url)
