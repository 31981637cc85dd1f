"""Memory and throughput meters.

CPU memory is the process's resident set, read from /proc/self/status: `VmHWM` is the kernel's high-water
mark, and writing 5 to /proc/self/clear_refs resets it to the current RSS, so the training peak can be read
apart from the loading peak. The resident set follows what torch holds only while glibc returns freed memory to
the kernel: `malloc_mode("exact")` (mallopt: every allocation above 128 KiB is its own mmap, unmapped when freed).
That costs speed, since every fresh tensor is then page-faulted (MiniLM-L6 LoRA, one thread: 2.45 s a step
against 1.43 s), so a run measures exactly only in a window (`MemoryMeter.start` -> `window_closed`: loading, the
first two optimizer steps and a probe pass over the epoch's largest batch, harness/train.py) and then lets glibc
keep freed memory (`malloc_mode("fast")`). CUDA memory comes from torch's allocator statistics.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

# OpenMP threads that finish their share of an op spin for the next one (libgomp: 300,000 spins by default). When
# another CPU-bound process shares the cores they spin against its threads: measured on a 2-core EPYC, MiniLM-L6
# LoRA on 2 threads ran at 117 tokens/s beside a second such run (19% of its 610 alone). With 1,000 spins (libgomp)
# or a passive wait (other OpenMP runtimes) two runs each kept 418-421 tokens/s (69%), and one alone 553 (the solo
# runs varied 522-610 across settings). Defaults only: a value the user set wins.
OMP_ENV = {"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": "PASSIVE"}


def process_env(environ) -> dict:
    """The variables a run's process starts with (OpenMP reads them at start-up): OMP_ENV unless already set."""
    return {k: environ.get(k, v) for k, v in OMP_ENV.items()}


# glibc's mallopt parameters (malloc.h) and the two settings a run switches between
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {
    # every allocation above 128 KiB is its own mmap, returned to the kernel when freed: RSS = what is held
    "exact": {_M_MMAP_THRESHOLD: 128 * 1024, _M_TRIM_THRESHOLD: 128 * 1024},
    # glibc's own ceiling for its dynamic threshold (32 MiB on 64-bit) and trim at twice it: freed tensors are
    # reused without a page fault, as glibc's defaults end up doing once the first big tensor is freed
    "fast": {_M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 64 * 2**20},
}


def _libc():
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def malloc_mode(mode: str) -> bool:
    """Switch glibc's allocator to `exact` (the resident set follows what the process holds) or `fast` (freed
    memory is kept for reuse); entering exact first returns what glibc holds free (malloc_trim). False where the
    C library has no mallopt (not glibc): memory is then read as the resident set, whatever the allocator keeps."""
    if mode not in MALLOC_SETTINGS:
        raise ValueError(f"malloc mode {mode!r}: valid are {sorted(MALLOC_SETTINGS)}")
    libc = _libc()
    if libc is None:
        return False
    ok = all(libc.mallopt(k, v) == 1 for k, v in MALLOC_SETTINGS[mode].items())
    if mode == "exact":
        libc.malloc_trim(0)
    return ok


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
    """baseline (after imports) -> load peak -> reset -> training peak. On CPU the allocator is exact from `start`
    until `window_closed` (the training peak is read there, then the allocator turns fast) or, if no window closes
    (no probe: harness/train.py says when), until training ends."""

    device: str = "cpu"
    baseline_mb: Optional[float] = None
    load_peak_mb: Optional[float] = None
    after_load_mb: Optional[float] = None
    train_peak_mb: Optional[float] = None
    hwm_reset: bool = False
    exact_allocator: bool = False
    window: Optional[dict] = None  # what the exact window covered, when one closed
    rss_hwm_after_training_mb: Optional[float] = None  # after a closed window: glibc's kept memory included
    cuda: dict = field(default_factory=dict)

    def start(self) -> None:
        import torch

        if self.device == "cpu":
            self.exact_allocator = malloc_mode("exact")
        self.baseline_mb = rss_mb()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def window_closed(self, covered: dict) -> None:
        """The exact window is over (`covered` says what it held): read the training peak, then let glibc keep
        freed memory for the rest of the run."""
        if self.device != "cpu" or self.window is not None:
            return
        self.train_peak_mb = hwm_mb()
        self.window = dict(covered)
        malloc_mode("fast")

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

        if self.window is None:
            self.train_peak_mb = hwm_mb()
        else:
            self.rss_hwm_after_training_mb = hwm_mb()
        if self.device == "cuda":
            self.cuda["train_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / MB
            self.cuda["train_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / MB

    def record(self) -> dict:
        method = (
            "cuda: torch.cuda.max_memory_allocated/max_memory_reserved, reset after loading"
            if self.device == "cuda"
            else "cpu: /proc/self/status VmHWM; high-water mark reset after loading via /proc/self/clear_refs"
            + ("" if self.hwm_reset else " (reset FAILED: train peak includes the load peak)")
            + ("; glibc exact (mallopt: mmap above 128 KiB, unmapped when freed) "
               + ("until the window closed (train_peak_mb read there), fast after" if self.window else
                  "for the whole run") if self.exact_allocator else "; allocator not switched (no glibc mallopt)")
        )
        from harness.record import Memory

        over = None if self.train_peak_mb is None or self.baseline_mb is None else self.train_peak_mb - self.baseline_mb
        cuda = self.device == "cuda"
        return Memory.of(
            method=method,
            # exact: the peak counts what was held, not memory the allocator kept after freeing it
            exact=cuda or (self.exact_allocator and self.hwm_reset),
            window=self.window,
            rss_hwm_after_training_mb=self.rss_hwm_after_training_mb,
            baseline_mb=self.baseline_mb,
            load_peak_mb=self.load_peak_mb,
            after_load_mb=self.after_load_mb,
            train_peak_mb=self.train_peak_mb,
            train_peak_over_baseline_mb=over,
            peak_mb=self.cuda.get("train_peak_allocated_mb") if cuda else over,
            extra=self.cuda if cuda else None,
        ).as_dict()


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

    def record(self, train_wall_s: float, eval_during_train_s: float = 0.0, memory_probe_s: float = 0.0) -> dict:
        """Rates use the training wall time minus evaluation and the memory probe (data loading and optimizer steps
        included)."""
        timed = self.step_times[self.warmup_steps :] or self.step_times
        seconds = max(train_wall_s - eval_during_train_s - memory_probe_s, 1e-9)
        from harness.record import Throughput as ThroughputSection

        return ThroughputSection.of(
            train_tokens=self.tokens,
            train_samples=self.samples,
            tokens_per_s=self.tokens / seconds,
            samples_per_s=self.samples / seconds,
            tokens_per_s_basis="non-pad training tokens / (train wall time - evaluation time - memory probe)",
            tokens_counted="non-pad tokens (attention_mask sum) of the training batches",
            train_wall_s=train_wall_s,
            eval_during_train_s=eval_during_train_s,
            memory_probe_s=memory_probe_s,
            train_step_seconds_total=self.train_seconds,
            median_step_s=statistics.median(timed) if timed else None,
            steps=len(self.step_times),
            warmup_steps_excluded=min(self.warmup_steps, len(self.step_times)),
            longest_batch=getattr(self, "longest_batch", None),  # (padded) tokens per sequence, its batch size
        ).as_dict()
