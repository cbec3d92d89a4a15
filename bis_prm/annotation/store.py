"""Where an annotation run keeps its work, so that a kill at any moment loses at most one part and nothing twice.

    <output_dir>/manifest.json         the configuration's settings and hash (written first)
    <output_dir>/parts/part-00000.jsonl   finished questions, one part per batch (append-only)
    <output_dir>/annotations/<source>.jsonl   the corpus, assembled from the parts at the end
    <output_dir>/images/...            copies of the questions' images (paths in the rows are relative to
                                       <output_dir>, as in VisualPRM400K-Raw)
    <output_dir>/report.json           skipped rows, cost

A part is written to a temporary file, flushed to disk and renamed into place: it exists whole or not at all. A part
holds whole questions (all their rollouts), each row keyed by its `sample_id`; on resume, the questions found in
parts are not annotated again, and the assembly keeps one row per `sample_id` and sorts rows by their position in
the input — so the corpus does not depend on where runs were interrupted, on batch sizes or on worker order.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .config import AnnotateConfig

__all__ = ["AnnotationStore", "ConfigMismatchError"]

_MANIFEST_VERSION = 1


class ConfigMismatchError(ValueError):
    """A resume with a configuration that would write a different corpus than the one started."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AnnotationStore:
    """
    The output directory of an annotation run (see the module docstring).

    Example:

    ```python
    >>> store = AnnotationStore("out", AnnotateConfig("questions.jsonl", "out"))  # doctest: +SKIP
    >>> store.open(); store.done_questions()  # doctest: +SKIP
    set()

    ```
    """

    def __init__(self, output_dir: str | os.PathLike, config: AnnotateConfig):
        self.root = Path(output_dir)
        self.config = config
        self.parts_dir = self.root / "parts"
        self.manifest_path = self.root / "manifest.json"

    def open(self) -> bool:
        """Create the directory and manifest, or check the manifest of a started run; `True` when resuming."""
        settings = self.config.output_settings()
        if self.manifest_path.exists():
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if manifest.get("fingerprint") != self.config.fingerprint():
                old = manifest.get("settings", {})
                changes = [
                    f"{name}: {old.get(name)!r} -> {settings.get(name)!r}"
                    for name in sorted(set(old) | set(settings))
                    if old.get(name) != settings.get(name)
                ]
                raise ConfigMismatchError(
                    f"{self.root} holds a run with another configuration ({'; '.join(changes) or 'version'}): "
                    "resume with the same settings, or choose a new --output-dir"
                )
            return True
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"version": _MANIFEST_VERSION, "fingerprint": self.config.fingerprint(), "settings": settings}
        _write_atomic(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return False

    def part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob("part-*.jsonl"))

    def read_parts(self) -> list[dict[str, Any]]:
        """Every record of every part, in part order (a left-over temporary file of a killed write is ignored)."""
        records = []
        for path in self.part_files():
            with open(path, encoding="utf-8") as f:
                records.extend(json.loads(line) for line in f if line.strip())
        return records

    def done_questions(self) -> set[str]:
        return {record["question_id"] for record in self.read_parts() if "question_id" in record}

    def first_phase_records(self) -> list[dict[str, Any]]:
        return [record for record in self.read_parts() if "row" in record and not record.get("refined")]

    def refined_samples(self) -> set[str]:
        return {record["sample_id"] for record in self.read_parts() if record.get("refined")}

    def write_part(self, records: list[dict[str, Any]], cost: dict[str, Any], name: str) -> Path:
        """Write one part: its cost line first, then one line per record; atomically."""
        path = self.parts_dir / f"part-{name}.jsonl"
        lines = [json.dumps({"cost": cost}, sort_keys=True)]
        lines += [json.dumps(record, ensure_ascii=False) for record in records]
        _write_atomic(path, "\n".join(lines) + "\n")
        return path

    def assemble(self) -> dict[str, int]:
        """Write `annotations/<source>.jsonl` from the parts (one row per sample id, in input order); returns the
        number of rows per source."""
        by_source: dict[str, dict[str, tuple]] = {}
        for record in self.read_parts():
            if "row" not in record:
                continue
            rows = by_source.setdefault(record["source"], {})
            # a refined record (the budgeted estimator's second phase) replaces the first one
            if record.get("refined") or record["sample_id"] not in rows:
                rows[record["sample_id"]] = (record["order"], record["row"])
        annotations = self.root / "annotations"
        annotations.mkdir(parents=True, exist_ok=True)
        counts = {}
        for source, rows in sorted(by_source.items()):
            ordered = sorted(rows.values(), key=lambda item: item[0])
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for _, row in ordered)
            _write_atomic(annotations / f"{source}.jsonl", text)
            counts[source] = len(ordered)
        return counts

    def total_cost(self) -> dict[str, float]:
        """The cost of every part, summed (the whole corpus, over every run that wrote it)."""
        total: dict[str, float] = {}
        for path in self.part_files():
            with open(path, encoding="utf-8") as f:
                for name, value in json.loads(f.readline())["cost"].items():
                    total[name] = total.get(name, 0) + value
        return total

    def copy_image(self, source_path: Path, relative: str) -> str:
        """Copy an image into `images/` (once); its path relative to the corpus root."""
        target = self.root / "images" / relative
        if not target.exists() or target.stat().st_size != source_path.stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source_path, tmp)
            os.replace(tmp, target)
        return f"images/{relative}"
