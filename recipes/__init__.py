"""Training recipes: YAML recipes per model, the shared accelerate configs, and the scripts that run them.

This folder ships in the wheel as `bis_prm.recipes`, so that `bis-prm quickstart` and `bis-prm train --config ...`
find the tiny recipe and the accelerate configs from an installed package (see [`recipe_path`]).
"""

from importlib.resources import files
from pathlib import Path

__all__ = ["recipe_path"]


def recipe_path(name: str) -> Path:
    """
    The path of a file of the recipes shipped with bis_prm.

    Example:

    ```python
    >>> recipe_path("accelerate_configs/zero3.yaml").name
    'zero3.yaml'
    ```
    """
    root = Path(str(files(__name__)))
    path = root / name
    if not path.is_file():
        shipped = sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))
        raise FileNotFoundError(f"recipe {name!r} is neither a file nor a recipe shipped with bis_prm ({shipped})")
    return path
