"""The result record's shape, declared once: one dataclass per section, read and written through `RunRecord`.

A record is one JSON file per run (harness.records writes it atomically). `RunRecord.read(d)` reads any record
written since schema version 1: a section a run did not produce is None, a field a section did not hold is None,
and keys a section does not declare are kept in its `extra` (so nothing an older or newer writer put there is
lost); `as_dict()` gives the JSON layout back. Each section is built through its dataclass where it is measured
(`Section.of`: task, model, method, params in harness.runner; memory and throughput in harness.profile; metrics in
harness.train), so a misspelt field fails there; the writer (harness.runner.execute) passes the whole record through
`check_shape`, so a top-level key outside this declaration fails in the tests rather than landing in the files; the
store and the reports read records through `RunRecord`.

Schema versions: 1 = the layout below (the only one so far); `read` is where a later layout's conversion goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

SCHEMA_VERSION = 1


class RecordShapeError(ValueError):
    """A record holds a top-level key this module does not declare."""


@dataclass
class Section:
    """Declared fields typed; any other key of the JSON object kept in `extra` and written back as it was."""

    extra: dict = field(default_factory=dict, repr=False)
    nulls: frozenset = field(default=frozenset(), repr=False)  # declared keys the JSON held as null

    @classmethod
    def read(cls, d: Any):
        if not isinstance(d, dict):
            return None
        names = [f.name for f in fields(cls) if f.name not in ("extra", "nulls")]
        return cls(**{k: d[k] for k in names if k in d}, extra={k: v for k, v in d.items() if k not in names},
                   nulls=frozenset(k for k in names if k in d and d[k] is None))

    @classmethod
    def of(cls, extra: dict | None = None, **values):
        """A section as the writer builds it: only declared fields (a misspelt one is a TypeError), a field given
        as None written as null; `extra`: keys of a kind of run this section does not declare (a task's prompt
        settings), written beside them."""
        return cls(**values, extra=dict(extra or {}), nulls=frozenset(k for k, v in values.items() if v is None))

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "nulls")}
        out = {k: v for k, v in out.items() if v is not None or k in self.nulls}
        out.update(self.extra)
        return out


@dataclass
class TaskInfo(Section):
    """What the run trained and evaluated on (prompt settings and token counts of causal tasks in `extra`)."""

    name: str | None = None
    kind: str | None = None
    train_examples: int | None = None
    eval_examples: dict | None = None  # {split: examples}
    pair_encoding: str | None = None
    tune: bool | None = None
    data_source: dict | None = None


@dataclass
class ModelInfo(Section):
    name: str | None = None
    source: str | None = None
    path: str | None = None
    arch: str | None = None
    pooling: str | None = None
    head: str | None = None
    device: str | None = None
    linear_storage: dict | None = None  # what the linear layers hold: bytes, bits per parameter, storage types
    fake_quant: dict | None = None  # a simulated 4-bit type (harness/fakequant.py): type, per-layer errors


@dataclass
class MethodInfo(Section):
    name: str | None = None
    baseline: str | None = None
    adapter: bool | None = None
    compute_dtype: str | None = None
    base_dtype: str | None = None
    bnb_config: dict | None = None
    lora: dict | None = None  # r, alpha, dropout, targets, target_modules, scale, ...
    gradient_checkpointing: bool | None = None
    lr: float | None = None
    trained: bool | None = None
    optimizer: dict | None = None


@dataclass
class Params(Section):
    trainable: int | None = None
    total: int | None = None
    trainable_pct: float | None = None
    adapter: int | None = None


@dataclass
class Metrics(Section):
    headline: dict | None = None  # {split, metric}
    final: dict | None = None  # {split: {metric: value}} after training
    best: dict | None = None  # the best evaluation during training (the LoRA paper's protocol)
    best_step: int | None = None
    history: list | None = None  # [{step, metrics: {split: {metric: value}}}]
    train_loss: Any = None

    def value(self, which: str = "final") -> float | None:
        """The headline metric's value in `final` or `best` (None when the run has none)."""
        h = self.headline or {}
        split, metric = h.get("split"), h.get("metric")
        return ((getattr(self, which) or {}).get(split) or {}).get(metric) if split and metric else None


@dataclass
class Memory(Section):
    """harness.profile.MemoryMeter.record(); CUDA runs add the allocator's peaks (in `extra`)."""

    peak_mb: float | None = None  # the training peak over the process's baseline (MiB)
    method: str | None = None  # how it was metered
    exact: bool | None = None  # the peak counts what was held, not what the allocator kept after freeing
    window: Any = None
    rss_hwm_after_training_mb: float | None = None
    baseline_mb: float | None = None
    load_peak_mb: float | None = None
    after_load_mb: float | None = None
    train_peak_mb: float | None = None
    train_peak_over_baseline_mb: float | None = None
    plan: dict | None = None  # the memory planner's prediction for this run
    breakdown: dict | None = None


@dataclass
class Throughput(Section):
    """harness.profile.Throughput.record(): real (non-pad) training tokens over the training wall time."""

    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    train_tokens: int | None = None
    train_samples: int | None = None
    tokens_per_s_basis: str | None = None
    tokens_counted: str | None = None
    train_wall_s: float | None = None
    eval_during_train_s: float | None = None
    memory_probe_s: float | None = None
    train_step_seconds_total: float | None = None
    median_step_s: float | None = None
    steps: int | None = None
    warmup_steps_excluded: int | None = None
    # (padded) tokens per sequence (seq_len) and its batch size; a causal LM whose logits ran only at scored
    # positions (train.scored_logits_only) adds scored_tokens, the most positions one batch scored
    longest_batch: dict | None = None


@dataclass
class Adapter(Section):
    path: str | None = None
    bytes: int | None = None
    init: str | None = None  # the adapter's weights before the first step


@dataclass
class Provenance:
    """Where and with what the run ran (top-level keys of the JSON)."""

    versions: dict | None = None
    git: dict | None = None
    host: dict | None = None


PROVENANCE = ("versions", "git", "host")
SECTIONS: dict[str, type[Section]] = {"task": TaskInfo, "model": ModelInfo, "method": MethodInfo, "params": Params,
                                      "metrics": Metrics, "memory": Memory, "throughput": Throughput,
                                      "adapter": Adapter}


@dataclass
class RunRecord:
    schema_version: int = SCHEMA_VERSION
    run_id: str | None = None
    experiment: str | None = None
    status: str | None = None  # running (never written), ok, failed, diverged, pruned
    config_hash: str | None = None
    config: dict = field(default_factory=dict)  # the resolved run config
    tags: dict = field(default_factory=dict)
    seed: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    times: dict | None = None  # {imports_s, data_s, load_s, train_s, final_eval_s, total_s}
    task: TaskInfo | None = None
    model: ModelInfo | None = None
    method: MethodInfo | None = None
    params: Params | None = None
    metrics: Metrics | None = None
    memory: Memory | None = None
    throughput: Throughput | None = None
    steps: int | None = None
    adapter: Adapter | None = None
    provenance: Provenance = field(default_factory=Provenance)
    error: str | None = None
    traceback: str | None = None
    hint: str | None = None  # what to change after an out-of-memory failure
    # task- and method-specific results, each written by one part of the run
    generation: dict | None = None  # {split: generation statistics}
    multiple_choice: dict | None = None  # MMLU: per subject and category
    mmlu: dict | None = None  # MMLU of an untrained base
    mmlu_before: dict | None = None
    mmlu_after: dict | None = None
    cosine_threshold: dict | None = None  # a two-class bi-encoder's starting threshold
    majority: dict | None = None  # the majority baseline's prediction
    pruned: dict | None = None  # a search trial stopped by the pruner
    resumed: Any = None
    checkpoints: str | None = None
    distributed: dict | None = None
    tracking: dict | None = None
    # where the results store found it (added on reading, never written)
    store_path: str | None = None
    store_dir: str | None = None
    extra: dict = field(default_factory=dict, repr=False)  # keys a newer writer added (read leniently)
    nulls: frozenset = field(default=frozenset(), repr=False)  # top-level keys the JSON held as null

    TOP: ClassVar[tuple[str, ...]] = ("schema_version", "run_id", "experiment", "status", "config_hash", "config",
                                      "tags", "seed", "started_at", "finished_at", "times", "steps", "error",
                                      "traceback", "hint", "generation", "multiple_choice", "mmlu", "mmlu_before",
                                      "mmlu_after", "cosine_threshold", "majority", "pruned", "resumed",
                                      "checkpoints", "distributed", "tracking")
    STORE_KEYS: ClassVar[dict[str, str]] = {"_path": "store_path", "_dir": "store_dir"}

    @classmethod
    def read(cls, d: dict, strict: bool = False) -> "RunRecord":
        """Any record written since schema 1 (see the module docstring). A key this module does not declare is
        kept in `extra`, or, with `strict` (the writer's check), raises RecordShapeError."""
        version = int(d.get("schema_version") or 1)
        if version > SCHEMA_VERSION:
            raise RecordShapeError(f"record schema_version {version} is newer than this reader's {SCHEMA_VERSION}")
        known = set(cls.TOP) | set(SECTIONS) | set(PROVENANCE) | set(cls.STORE_KEYS)
        unknown = sorted(set(d) - known)
        if unknown and strict:
            raise RecordShapeError(f"record {d.get('run_id')!r} holds undeclared keys {unknown}; declare them in "
                                   "harness/record.py")
        kw: dict[str, Any] = {k: d[k] for k in cls.TOP if k in d}
        kw.update({name: sec.read(d.get(name)) for name, sec in SECTIONS.items()})
        kw["provenance"] = Provenance(*(d.get(k) for k in PROVENANCE))
        kw.update({attr: d[key] for key, attr in cls.STORE_KEYS.items() if key in d})
        kw["extra"] = {k: d[k] for k in unknown}
        kw["nulls"] = frozenset(k for k, v in d.items() if v is None)
        return cls(**kw)

    def as_dict(self) -> dict:
        """The JSON layout: the declared keys that hold something (or held null), sections as objects, provenance
        at the top; never the store's annotations."""
        out: dict[str, Any] = {}
        for k in self.TOP:
            v = getattr(self, k)
            if v is not None or k in self.nulls:
                out[k] = v
        for name in SECTIONS:
            sec = getattr(self, name)
            if sec is not None:
                out[name] = sec.as_dict()
            elif name in self.nulls:
                out[name] = None
        for k in PROVENANCE:
            v = getattr(self.provenance, k)
            if v is not None:
                out[k] = v
        out.update(self.extra)
        return out


def check_shape(d: dict) -> dict:
    """The record as the writer will store it, through RunRecord (an undeclared key raises RecordShapeError)."""
    return RunRecord.read(d, strict=True).as_dict()
