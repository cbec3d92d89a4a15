"""`run_annotation`: read the questions, annotate them batch by batch into resumable parts, assemble the corpus.

The work is split in batches of `batch_size` questions; each finished batch is one part of the store
(`bis_prm.annotation.store`), so a rerun of the same command after a kill picks up where the last part ended. With
`ray_workers`, the batches run on Ray Data (`map_batches` over the pending question positions, one backend per actor)
and the driver writes the parts as they come back: sharding, retries and worker order cannot change the corpus,
since every row is keyed by its stable sample id and the assembly sorts by input position.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bis_prm.data.images import resolve_image
from bis_prm.evaluation.jsonl import SkippedRows

from .backend import GenerationBackend
from .config import AnnotateConfig
from .cost import CostCounter, format_cost
from .pipeline import annotate_questions, refine_samples
from .questions import Question, read_questions
from .store import AnnotationStore
from .verify import AnswerChecker

__all__ = ["AnnotationResult", "load_questions", "make_backend", "run_annotation"]


@dataclass
class AnnotationResult:
    """
    What [`run_annotation`] wrote.

    Args:
        output_dir (`Path`): The corpus root (`annotations/` inside).
        rows (`dict[str, int]`): Rows per source in the assembled corpus.
        skipped (`SkippedRows`): Input rows left out, with their reasons and lines.
        cost (`dict`): What this invocation spent (continuations, tokens, wall time).
        total_cost (`dict`): What the whole corpus cost, over every run that wrote a part of it.
        resumed (`bool`): Whether an earlier run's parts were reused.
    """

    output_dir: Path
    rows: dict[str, int]
    skipped: SkippedRows
    cost: dict[str, float]
    total_cost: dict[str, float]
    resumed: bool = False
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def annotations_dir(self) -> Path:
        return self.output_dir / "annotations"


def make_backend(config: AnnotateConfig) -> GenerationBackend:
    """The backend `config.backend` names, loaded on `config.policy` (the engine is imported here only)."""
    if config.backend == "transformers":
        from .transformers_backend import TransformersBackend

        return TransformersBackend(
            config.policy, temperature=config.temperature, top_p=config.top_p, device=config.device
        )
    if config.backend == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(
            config.policy,
            temperature=config.temperature,
            top_p=config.top_p,
            tensor_parallel_size=config.tensor_parallel_size,
            data_parallel_size=config.data_parallel_size,
            separator=config.separator,
        )
    if config.backend == "vllm-server":
        from .vllm_server_backend import VLLMServerBackend

        return VLLMServerBackend(
            config.vllm_url,
            config.policy,
            api_key=config.vllm_api_key,
            temperature=config.temperature,
            top_p=config.top_p,
            separator=config.separator,
        )
    raise ValueError("the scripted backend is a Python object: pass it to run_annotation(config, backend=...)")


def load_questions(config: AnnotateConfig, checker: AnswerChecker) -> tuple[list[Question], SkippedRows]:
    """The questions of `config` (the first `max_questions`), and the skipped rows."""
    questions, skipped = read_questions(
        config.questions, checker, config.image_root, config.split, image_dir=Path(config.output_dir) / "hub_images"
    )
    return questions[: config.max_questions] if config.max_questions is not None else questions, skipped


def _image_mapper(store: AnnotationStore):
    def image_path(question: Question, path: str) -> str:
        return store.copy_image(resolve_image(path, question.image_root), path)

    return image_path


def run_annotation(
    config: AnnotateConfig, backend: GenerationBackend | None = None, ray_workers: int = 0
) -> AnnotationResult:
    """
    Annotate `config.questions` into a VisualPRM400K-Raw corpus at `config.output_dir`, resuming a started run.

    Args:
        config ([`AnnotateConfig`]):
            What to annotate and how.
        backend ([`GenerationBackend`], *optional*):
            The engine; defaults to the one `config.backend` names, loaded on `config.policy`.
        ray_workers (`int`, *optional*, defaults to `0`):
            Run the batches on this many Ray Data actors (each loads its own backend; `ray.init` is called when Ray
            is not initialised yet); 0 runs them in this process.

    Returns:
        [`AnnotationResult`].

    Raises:
        `ConfigMismatchError`: `output_dir` holds a run started with other settings (the message lists them).

    Example:

    ```python
    >>> config = AnnotateConfig("questions.jsonl", "corpus", policy="Qwen/Qwen2.5-0.5B-Instruct", num_mc=16)
    >>> result = run_annotation(config)  # doctest: +SKIP
    >>> result.rows  # doctest: +SKIP
    {'questions': 32}

    ```
    """
    checker = AnswerChecker(config.verifier)
    store = AnnotationStore(config.output_dir, config)
    resumed = store.open()
    questions, skipped = load_questions(config, checker)
    done = store.done_questions()
    pending = [(order, q) for order, q in enumerate(questions) if q.question_id not in done]
    batches = [pending[start : start + config.batch_size] for start in range(0, len(pending), config.batch_size)]
    first_part = len(store.part_files())
    cost = CostCounter()
    bar = tqdm(total=len(pending), desc="Annotating", unit="question", disable=not config.progress)
    if ray_workers and batches:
        parts = _ray_parts(config, [[order for order, _ in batch] for batch in batches], ray_workers)
    else:
        backend = backend or (make_backend(config) if batches else None)
        parts = (_annotate_batch(batch, backend, checker, config, store) for batch in batches)
    written = first_part

    def save(records: list[dict], part_cost: dict[str, float]) -> None:
        nonlocal written
        store.write_part(records, part_cost, f"{written:05d}")
        written += 1
        for name, value in part_cost.items():
            setattr(cost, name, getattr(cost, name) + value)

    for records, part_cost, size in parts:
        save(records, part_cost)
        bar.update(size)
    bar.close()
    if config.estimator == "budgeted":
        for records, part_cost in _refinement_parts(config, store, questions, backend, checker):
            save(records, part_cost)
    rows = store.assemble()
    total = store.total_cost()
    report = {
        "rows": rows,
        "skipped": skipped.summary(),
        "cost": cost.as_dict(),
        "total_cost": total,
        "settings": config.output_settings(),
    }
    with open(store.root / "report.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if config.progress:
        print(format_cost(cost.as_dict(), "Cost of this run"))
    return AnnotationResult(store.root, rows, skipped, cost.as_dict(), total, resumed, report)


def refinement_candidates(records: list[dict], ratio: float, alpha: float) -> list[dict]:
    """
    The first-phase records a budgeted run refines: per source, the `ratio` share with the highest BIS (the
    library's selection, `bis_prm.data.selection.select_subset`), in input order.
    """
    import datasets

    from bis_prm.data.selection import select_subset

    if not records:
        return []
    records = sorted(records, key=lambda record: (record["source"], record["order"]))
    table = {
        "source": [record["source"] for record in records],
        "mc_scores": [[step["score"] for step in record["row"]["steps_with_score"]] for record in records],
        "index": list(range(len(records))),
    }
    chosen = select_subset(datasets.Dataset.from_dict(table), method="bis", ratio=ratio, alpha=alpha)["index"]
    return [records[index] for index in chosen]


def _refinement_parts(config, store, questions, backend, checker):
    candidates = refinement_candidates(store.first_phase_records(), config.refine_ratio, config.target_alpha)
    done = store.refined_samples()
    pending = [record for record in candidates if record["sample_id"] not in done]
    if not pending:
        return
    backend = backend or make_backend(config)
    by_id = {q.question_id: q for q in questions}
    bar = tqdm(total=len(pending), desc="Refining (full MC)", unit="rollout", disable=not config.progress)
    for start in range(0, len(pending), config.batch_size):
        batch = pending[start : start + config.batch_size]
        cost = CostCounter()
        records = refine_samples(batch, by_id, backend, checker, config, cost, image_path=_image_mapper(store))
        bar.update(len(batch))
        yield records, cost.as_dict()
    bar.close()


def _annotate_batch(
    batch: list[tuple[int, Question]],
    backend: GenerationBackend,
    checker: AnswerChecker,
    config: AnnotateConfig,
    store: AnnotationStore,
) -> tuple[list[dict], dict[str, float], int]:
    cost = CostCounter()
    records = annotate_questions(batch, backend, checker, config, cost, image_path=_image_mapper(store))
    return records, cost.as_dict(), len(batch)


class _RayAnnotator:
    """A Ray Data actor: its own backend and questions (read again: reading is deterministic)."""

    def __init__(self, config: AnnotateConfig):
        self.config = config
        self.checker = AnswerChecker(config.verifier)
        self.questions = load_questions(config, self.checker)[0]
        self.store = AnnotationStore(config.output_dir, config)
        self.backend = make_backend(config)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        chosen = [(int(order), self.questions[int(order)]) for order in batch["order"]]
        records, cost, size = _annotate_batch(chosen, self.backend, self.checker, self.config, self.store)
        return {"part": [json.dumps({"records": records, "cost": cost, "size": size})]}


def _ray_parts(config: AnnotateConfig, batches: list[list[int]], workers: int):
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    items = [{"order": order} for batch in batches for order in batch]
    dataset = ray.data.from_items(items).map_batches(
        _RayAnnotator,
        fn_constructor_kwargs={"config": config},
        batch_size=config.batch_size,
        concurrency=workers,
    )
    for row in dataset.iter_rows():
        part = json.loads(row["part"])
        yield part["records"], part["cost"], part["size"]
