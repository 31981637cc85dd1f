"""Progress a user can see: one run's training (step/total, loss, samples/s, ETA), a sweep's jobs and a search's
trials (the launcher and harness.search format theirs with `eta` and `clock`).

On a terminal the run's line is rewritten in place at most once a second; anywhere else (a sweep job's
output.log, CI, a pipe) it becomes a log line every `every_s` seconds and at each quarter of the run. Nothing
here reads a device value: the loss is the last one the Trainer logged (it syncs ~25 times a run anyway), the
sample count is counted on the host.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, TextIO

log = logging.getLogger("harness.progress")


def clock(seconds: Optional[float]) -> str:
    """12 s, 3:05, 1:02:03."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta(done: int, total: int, elapsed: float, parallel: int = 1) -> Optional[float]:
    """Seconds left if the remaining units take as long as the finished ones did, `parallel` at a time."""
    if done <= 0 or total <= done:
        return None if done <= 0 else 0.0
    return elapsed / done * (total - done) / max(1, parallel)


class Progress:
    """One run's training progress. `update(step, samples, loss)` after every optimizer step; `close()` at the end."""

    def __init__(self, total: int, *, stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 every_s: float = 60.0, now: Callable[[], float] = time.monotonic, label: str = "train"):
        self.total, self.label, self.every_s, self.now = max(int(total), 1), label, every_s, now
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.t0 = now()
        self.last_shown = self.t0
        self.quarter = 0
        self.first: Optional[int] = None  # the step before this process's first (a resumed run starts past 0)
        self.lines: list[str] = []  # every line shown (tests read them)
        self._open = False

    def line(self, step: int, samples: int, loss: Optional[float]) -> str:
        elapsed = self.now() - self.t0
        parts = [f"{self.label} {step}/{self.total} ({100 * step / self.total:.0f}%)"]
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if elapsed > 0 and samples:
            parts.append(f"{samples / elapsed:.1f} samples/s")
        done = step - (self.first or 0)
        parts.append(f"{clock(elapsed)} elapsed, ETA {clock(eta(done, self.total - (self.first or 0), elapsed))}")
        return " | ".join(parts)

    def update(self, step: int, samples: int = 0, loss: Optional[float] = None) -> Optional[str]:
        if self.first is None:
            self.first = step - 1
        t = self.now()
        quarter = 4 * step // self.total
        if self.tty:
            due = t - self.last_shown >= 1.0 or step >= self.total
        else:
            due = t - self.last_shown >= self.every_s or quarter > self.quarter
        if not due:
            return None
        self.last_shown, self.quarter = t, quarter
        text = self.line(step, samples, loss)
        self.lines.append(text)
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._open = True
        else:
            log.info("%s", text)
        return text

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
