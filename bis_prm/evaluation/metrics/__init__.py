"""Evaluation metrics shipped with bis_prm, loadable with `evaluate.load`.

`VISUALPROCESSBENCH`, `PROCESSBENCH` and `PRMBENCH` are the paths of the metric scripts
(`evaluate.load(PROCESSBENCH)`); `install_metrics` puts them into evaluate's modules cache so that the bare names
(`evaluate.load("processbench")`) resolve offline. The NumPy functions (`compute_visualprocessbench`,
`select_threshold`, `compute_processbench`, `select_processbench_threshold`, `compute_prmbench`) are imported lazily:
the metric scripts import `evaluate`, which imports torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from bis_prm.evaluation.metrics.install import install_metric, install_metrics

_HERE = Path(__file__).parent
VISUALPROCESSBENCH = str(_HERE / "visualprocessbench" / "visualprocessbench.py")
PROCESSBENCH = str(_HERE / "processbench" / "processbench.py")
PRMBENCH = str(_HERE / "prmbench" / "prmbench.py")

# public name -> (metric module, its name there)
_LAZY = {
    "compute_visualprocessbench": ("visualprocessbench", "compute_visualprocessbench"),
    "select_threshold": ("visualprocessbench", "select_threshold"),
    "compute_processbench": ("processbench", "compute_processbench"),
    "select_processbench_threshold": ("processbench", "select_threshold"),
    "processbench_f1_curve": ("processbench", "f1_curve"),
    "compute_prmbench": ("prmbench", "compute_prmbench"),
}

__all__ = [
    "PRMBENCH",
    "PROCESSBENCH",
    "VISUALPROCESSBENCH",
    "compute_prmbench",
    "compute_processbench",
    "compute_visualprocessbench",
    "install_metric",
    "install_metrics",
    "processbench_f1_curve",
    "select_processbench_threshold",
    "select_threshold",
]


def __getattr__(name: str):
    if name in _LAZY:
        metric, attribute = _LAZY[name]
        module = importlib.import_module(f"bis_prm.evaluation.metrics.{metric}.{metric}")
        return getattr(module, attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
