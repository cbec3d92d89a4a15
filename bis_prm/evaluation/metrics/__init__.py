"""Evaluation metrics shipped with bis_prm, loadable with `evaluate.load`.

`VISUALPROCESSBENCH` is the path of the metric script (`evaluate.load(VISUALPROCESSBENCH)`); `install_metric` puts it
into evaluate's modules cache so that the bare name `evaluate.load("visualprocessbench")` resolves offline. The
NumPy functions `compute_visualprocessbench` and `select_threshold` are imported lazily: the metric script imports
`evaluate`, which imports torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from bis_prm.evaluation.metrics.install import install_metric

VISUALPROCESSBENCH = str(Path(__file__).parent / "visualprocessbench" / "visualprocessbench.py")

_LAZY = {"compute_visualprocessbench", "select_threshold"}

__all__ = ["VISUALPROCESSBENCH", "compute_visualprocessbench", "install_metric", "select_threshold"]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module("bis_prm.evaluation.metrics.visualprocessbench.visualprocessbench")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
