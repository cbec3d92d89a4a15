"""Make `evaluate.load("visualprocessbench")` (and `"processbench"`, `"prmbench"`) resolve offline by placing the
metrics in evaluate's modules cache.

`evaluate.load(name)` with a bare name (evaluate 0.4.x, `evaluate.loading.evaluation_module_factory`) tries, in order:

1. `./<name>/<name>.py` relative to the working directory;
2. the Hub repository `evaluate-metric/<name>` (then `evaluate-comparison/`, `evaluate-measurement/`);
3. when that fails for any reason (offline, no network, no such repository), its modules cache: the most recently
   modified `<HF_MODULES_CACHE>/evaluate_modules/metrics/evaluate-metric--<name>/<64-hex hash>/<name>.py`.

`install_metric` writes a script there, under the same content hash evaluate itself computes, with the package
`__init__.py` files and the metadata JSON evaluate writes. It runs once per script version (later calls cost one read
of the script, a hash and a `stat`), so `import bis_prm` runs `install_metrics`, which installs every metric of
`METRIC_NAMES`. It reads the same environment variables
as evaluate (`HF_MODULES_CACHE`, else `HF_HOME/modules`, else `XDG_CACHE_HOME/huggingface/modules`). Set
`BIS_PRM_NO_METRIC_INSTALL=1` to skip it on import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

METRIC_NAME = "visualprocessbench"
METRIC_NAMES = ("visualprocessbench", "processbench", "prmbench")
# evaluate tries the "metric" namespace first: `evaluate-metric/<name>` on the Hub, `evaluate-metric--<name>` cached
CACHE_NAMESPACE = "evaluate-metric"


def _script_path(name: str = METRIC_NAME) -> Path:
    return Path(__file__).parent / name / f"{name}.py"


def modules_cache() -> Path:
    """evaluate's dynamic modules directory (`evaluate.config.HF_MODULES_CACHE`), found without importing evaluate."""
    if "HF_MODULES_CACHE" in os.environ:
        return Path(os.environ["HF_MODULES_CACHE"])
    cache_home = os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    return Path(os.path.expanduser(cache_home)) / "modules"


def script_hash(source: str) -> str:
    """The hash evaluate names a cached module's folder with (`datasets.packaged_modules._hash_python_lines`)."""
    lines = [re.sub(r"#.*", "", line) for line in source.splitlines(keepends=True)]
    return hashlib.sha256("\n".join(line for line in lines if line).encode("utf-8")).hexdigest()


def install_metric(cache_dir: str | os.PathLike | None = None, name: str = METRIC_NAME) -> str:
    """
    Install one of our metric scripts into evaluate's modules cache, once per script version.

    Writing into another library's cache is the only way to make a bare metric name resolve offline: evaluate has no
    registration API, and its other lookups are the working directory and the Hub. So it is done once, checked with one
    `stat` on later imports, and atomically: the hash folder is written under a temporary name and renamed into place,
    so that processes importing bis_prm together (`accelerate launch`) never see a half-written module.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*):
            The modules cache; defaults to the one evaluate uses (`HF_MODULES_CACHE`).
        name (`str`, *optional*, defaults to `"visualprocessbench"`):
            One of `METRIC_NAMES`.

    Returns:
        `str`: the path of the installed script.

    Example:

    ```python
    >>> path = install_metric()
    >>> import evaluate
    >>> metric = evaluate.load("visualprocessbench")  # works offline

    ```
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; bis_prm ships {', '.join(METRIC_NAMES)}.")
    source = _script_path(name).read_text(encoding="utf-8")
    digest = script_hash(source)
    cache = Path(cache_dir) if cache_dir is not None else modules_cache()
    metric_dir = cache / "evaluate_modules" / "metrics" / f"{CACHE_NAMESPACE}--{name}"
    target = metric_dir / digest / f"{name}.py"
    if target.is_file():
        return str(target)

    metric_dir.mkdir(parents=True, exist_ok=True)
    # every level must be a package: evaluate imports `evaluate_modules.metrics.<name>.<hash>.<script>`
    for package in (cache, cache / "evaluate_modules", metric_dir.parent, metric_dir):
        (package / "__init__.py").touch(exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=metric_dir, prefix=f".{digest[:8]}-"))
    try:
        (staging / "__init__.py").touch()
        (staging / f"{name}.py").write_text(source, encoding="utf-8")
        meta = {"original file path": str(_script_path(name)), "local file path": str(target)}
        (staging / f"{name}.json").write_text(json.dumps(meta), encoding="utf-8")
        os.rename(staging, target.parent)  # evaluate takes the newest hash folder: this one, from now on
    except OSError:
        if not target.is_file():  # another process did not win the race: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def install_metrics(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """
    Install every metric of `METRIC_NAMES` (see [`install_metric`]); returns the installed scripts' paths.

    Example:

    ```python
    >>> paths = install_metrics()
    >>> [path.split("/")[-1] for path in paths]
    ['visualprocessbench.py', 'processbench.py', 'prmbench.py']

    ```
    """
    return [install_metric(cache_dir, name) for name in METRIC_NAMES]
