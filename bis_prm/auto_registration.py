"""Registers the PRM classes with `AutoModelForTokenClassification` once bis_prm is imported, without making
`import bis_prm` pay for torch.

Defining the PRM classes imports torch and the backbones' modelling code (seconds), which data-only work never
needs (`bis-prm select`, its file-reading worker processes). So `import bis_prm` loads `bis_prm.model.modeling_prm` at
once only when transformers' auto-model module is already loaded, and otherwise right after that module is first
imported — before any `AutoModelForTokenClassification.from_pretrained` call can run.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

AUTO_MODULE = "transformers.models.auto.modeling_auto"
PRM_MODULE = "bis_prm.model.modeling_prm"


class _RegisterAfterAutoImport(importlib.abc.MetaPathFinder):
    """Import hook: lets the normal machinery load the auto module, then imports the PRM module (one shot)."""

    def find_spec(self, name, path, target=None):
        if name != AUTO_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            importlib.import_module(PRM_MODULE)

        spec.loader.exec_module = exec_then_register
        return spec


def register_prm_auto_classes() -> None:
    """
    Make `AutoModelForTokenClassification` resolve the PRM classes of `bis_prm.model.modeling_prm`.

    Called by `import bis_prm`; idempotent.

    Example:

    ```python
    >>> import bis_prm  # noqa: F401  (registers)
    >>> from transformers import AutoModelForTokenClassification
    >>> model = AutoModelForTokenClassification.from_pretrained("path/to/saved-prm")  # doctest: +SKIP
    ```
    """
    if AUTO_MODULE in sys.modules:
        importlib.import_module(PRM_MODULE)
    elif not any(isinstance(finder, _RegisterAfterAutoImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterAutoImport())
