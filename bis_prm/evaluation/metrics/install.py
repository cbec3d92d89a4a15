"""Make `evaluate.load("visualprocessbench")` resolve offline by placing the metric in evaluate's modules cache.

`evaluate.load(name)` with a bare name (evaluate 0.4.x, `evaluate.loading.evaluation_module_factory`) tries, in order:

1. `./<name>/<name>.py` relative to the working directory;
2. the Hub repository `evaluate-metric/<name>` (then `evaluate-comparison/`, `evaluate-measurement/`);
3. when that fails for any reason (offline, no network, no such repository), its modules cache: the most recently
   modified `<HF_MODULES_CACHE>/evaluate_modules/metrics/evaluate-metric--<name>/<64-hex hash>/<name>.py`.

`install_metric` writes our script there, under the same content hash evaluate itself computes, with the package
`__init__.py` files and the metadata JSON evaluate writes. It is idempotent and cheap when already installed (one
read of the script, a hash and a few `stat`s), so `import bis_prm` runs it. It reads the same environment variables
as evaluate (`HF_MODULES_CACHE`, else `HF_HOME/modules`, else `XDG_CACHE_HOME/huggingface/modules`). Set
`BIS_PRM_NO_METRIC_INSTALL=1` to skip it on import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

METRIC_NAME = "visualprocessbench"
# evaluate tries the "metric" namespace first: `evaluate-metric/<name>` on the Hub, `evaluate-metric--<name>` cached
CACHE_NAMESPACE = "evaluate-metric"


def _script_path() -> Path:
    return Path(__file__).parent / METRIC_NAME / f"{METRIC_NAME}.py"


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


def _write_atomic(path: Path, text: str) -> None:
    # several processes (e.g. `accelerate launch`) may import bis_prm at once; a reader never sees a partial file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def install_metric(cache_dir: str | os.PathLike | None = None) -> str:
    """
    Install the `visualprocessbench` metric script into evaluate's modules cache.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*):
            The modules cache; defaults to the one evaluate uses (`HF_MODULES_CACHE`).

    Returns:
        `str`: the path of the installed script.

    Example:
        >>> path = install_metric()
        >>> import evaluate
        >>> metric = evaluate.load("visualprocessbench")  # works offline
    """
    source = _script_path().read_text(encoding="utf-8")
    digest = script_hash(source)
    cache = Path(cache_dir) if cache_dir is not None else modules_cache()
    metric_dir = cache / "evaluate_modules" / "metrics" / f"{CACHE_NAMESPACE}--{METRIC_NAME}"
    target = metric_dir / digest / f"{METRIC_NAME}.py"

    if target.is_file() and _is_newest(metric_dir, digest):
        return str(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    # every level must be a package: evaluate imports `evaluate_modules.metrics.<name>.<hash>.<script>`
    for package in (cache, cache / "evaluate_modules", metric_dir.parent, metric_dir, target.parent):
        (package / "__init__.py").touch(exist_ok=True)
    if not target.is_file() or target.read_text(encoding="utf-8") != source:
        _write_atomic(target, source)
    meta = {"original file path": str(_script_path()), "local file path": str(target)}
    _write_atomic(target.with_suffix(".json"), json.dumps(meta))
    # evaluate takes the most recently modified cached hash; ours must win over older bis_prm versions
    os.utime(target)
    return str(target)


def _is_newest(metric_dir: Path, digest: str) -> bool:
    def mtime(entry: str) -> float:
        script = metric_dir / entry / f"{METRIC_NAME}.py"
        return script.stat().st_mtime if script.is_file() else float("-inf")

    others = [entry for entry in os.listdir(metric_dir) if len(entry) == 64 and entry != digest]
    return all(mtime(entry) < mtime(digest) for entry in others)
