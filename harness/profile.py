"""Memory and throughput meters.

CPU memory is the process's resident set, read from /proc/self/status: `VmHWM` is the kernel's high-water
mark, and writing 5 to /proc/self/clear_refs resets it to the current RSS, so the training peak can be read
apart from the loading peak. glibc serves big allocations from mmap only above its dynamic threshold; with
MALLOC_MMAP_THRESHOLD_=131072 set before the process starts, freed tensors go back to the kernel and RSS
follows what torch holds (harness.run sets it by re-executing itself). CUDA memory comes from torch's
allocator statistics.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# OpenMP threads that finish their share of an op spin for the next one (libgomp: 300,000 spins by default). When
# another CPU-bound process shares the cores they spin against its threads: measured on a 2-core EPYC, MiniLM-L6
# LoRA on 2 threads ran at 117 tokens/s beside a second such run (19% of its 610 alone). With 1,000 spins (libgomp)
# or a passive wait (other OpenMP runtimes) two runs each kept 418-421 tokens/s (69%), and one alone 553 (the solo
# runs varied 522-610 across settings). Defaults only: a value the user set wins.
OMP_ENV = {"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": "PASSIVE"}


def process_env(environ) -> dict:
    """The variables a run's process starts with (they are read at start-up): MALLOC_ENV always, OMP_ENV unless
    already set."""
    return {**MALLOC_ENV, **{k: environ.get(k, v) for k, v in OMP_ENV.items()}}


MB = 1024 * 1024  # every *_mb value in a record is in MiB (2**20 bytes); reports label it MiB


def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> Optional[float]:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def hwm_mb() -> Optional[float]:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryMeter:
    """baseline (after imports) -> load peak -> reset -> training peak."""

    device: str = "cpu"
    baseline_mb: Optional[float] = None
    load_peak_mb: Optional[float] = None
    after_load_mb: Optional[float] = None
    train_peak_mb: Optional[float] = None
    hwm_reset: bool = False
    cuda: dict = field(default_factory=dict)

    def start(self) -> None:
        import torch

        self.baseline_mb = rss_mb()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def loaded(self) -> None:
        import torch

        self.load_peak_mb = hwm_mb()
        self.after_load_mb = rss_mb()
        if self.device == "cuda":
            self.cuda["load_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / MB
            torch.cuda.reset_peak_memory_stats()
        self.hwm_reset = reset_hwm()

    def trained(self) -> None:
        import torch

        self.train_peak_mb = hwm_mb()
        if self.device == "cuda":
            self.cuda["train_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / MB
            self.cuda["train_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / MB

    def record(self) -> dict:
        method = (
            "cuda: torch.cuda.max_memory_allocated/max_memory_reserved, reset after loading"
            if self.device == "cuda"
            else "cpu: /proc/self/status VmHWM; high-water mark reset after loading via /proc/self/clear_refs"
            + ("" if self.hwm_reset else " (reset FAILED: train peak includes the load peak)")
            + f"; MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}"
        )
        rec = {
            "method": method,
            "baseline_mb": self.baseline_mb,
            "load_peak_mb": self.load_peak_mb,
            "after_load_mb": self.after_load_mb,
            "train_peak_mb": self.train_peak_mb,
            "train_peak_over_baseline_mb": (
                None if self.train_peak_mb is None or self.baseline_mb is None else self.train_peak_mb - self.baseline_mb
            ),
        }
        if self.device == "cuda":
            rec.update(self.cuda)
            rec["peak_mb"] = self.cuda.get("train_peak_allocated_mb")
        else:
            rec["peak_mb"] = rec["train_peak_over_baseline_mb"]
        return rec


@dataclass
class Throughput:
    """Step times (training steps only; evaluation excluded) and real (non-pad) token counts."""

    warmup_steps: int = 2
    step_times: list = field(default_factory=list)
    tokens: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    breakdown: Optional[dict] = None  # train.memory_breakdown at the second optimizer step
    _t0: Optional[float] = None

    def step_begin(self) -> None:
        self._t0 = time.perf_counter()

    def step_end(self) -> None:
        if self._t0 is not None:
            dt = time.perf_counter() - self._t0
            self.step_times.append(dt)
            self.train_seconds += dt
            self._t0 = None

    def record(self, train_wall_s: float, eval_during_train_s: float = 0.0) -> dict:
        """Rates use the training wall time minus evaluation (data loading and optimizer steps included)."""
        timed = self.step_times[self.warmup_steps :] or self.step_times
        seconds = max(train_wall_s - eval_during_train_s, 1e-9)
        return {
            "train_tokens": self.tokens,
            "train_samples": self.samples,
            "tokens_per_s": self.tokens / seconds,
            "samples_per_s": self.samples / seconds,
            "tokens_per_s_basis": "non-pad training tokens / (train wall time - evaluation time)",
            "tokens_counted": "non-pad tokens (attention_mask sum) of the training batches",
            "train_wall_s": train_wall_s,
            "eval_during_train_s": eval_during_train_s,
            "train_step_seconds_total": self.train_seconds,
            "median_step_s": statistics.median(timed) if timed else None,
            "steps": len(self.step_times),
            "warmup_steps_excluded": min(self.warmup_steps, len(self.step_times)),
            "longest_batch": getattr(self, "longest_batch", None),  # (padded) tokens per sequence, its batch size
        }
