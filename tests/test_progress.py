"""Progress a user sees: a run's training line, a sweep's job tally, a search's trial line."""

from __future__ import annotations

import io
import logging

import pytest

from harness.progress import Progress, clock, eta


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_clock_and_eta():
    assert [clock(x) for x in (0, 12.4, 65, 3723, None, -1)] == ["0 s", "12 s", "1:05", "1:02:03", "?", "?"]
    assert eta(0, 10, 5.0) is None and eta(10, 10, 50.0) == 0.0
    assert eta(2, 10, 20.0) == pytest.approx(80.0)  # 10 s each, 8 left
    assert eta(2, 10, 20.0, parallel=2) == pytest.approx(40.0)


def test_off_a_terminal_the_run_logs_a_line_per_quarter_and_per_minute(caplog):
    now = Clock()
    p = Progress(100, stream=io.StringIO(), tty=False, every_s=60, now=now)
    shown = []
    with caplog.at_level(logging.INFO, logger="harness.progress"):
        for step in range(1, 101):
            now.t += 1.0 if step != 10 else 70.0  # step 10 takes long: a line for the minute without news
            if p.update(step, samples=16 * step, loss=0.5):
                shown.append(step)
    assert shown == [10, 25, 50, 75, 100]
    assert p.lines[-1] == "train 100/100 (100%) | loss 0.5 | 9.5 samples/s | 2:49 elapsed, ETA 0 s"
    assert p.lines[0].startswith("train 10/100 (10%) | loss 0.5 | 2.0 samples/s | 1:19 elapsed, ETA 11:51")
    assert [r.getMessage() for r in caplog.records] == p.lines
    assert p.stream.getvalue() == ""  # log lines only: no carriage returns in a log file


def test_on_a_terminal_the_line_is_rewritten_at_most_once_a_second():
    now, out = Clock(), io.StringIO()
    p = Progress(10, stream=out, tty=True, now=now)
    for step in range(1, 11):
        now.t += 0.4
        p.update(step, samples=step)
    p.close()
    assert len(p.lines) == 4  # steps 3, 6, 9 (1.2 s apart) and the last
    assert out.getvalue().count("\r\033[K") == 4 and out.getvalue().endswith("train 10/10 (100%) | 2.5 samples/s | "
                                                                           "4 s elapsed, ETA 0 s\n")


def test_the_sweep_tally_counts_statuses_and_estimates_what_is_left():
    from hydra_plugins.harness_launcher.harness_launcher import _Tally

    t = _Tally(total=4, skipped=3, parallel=2)
    assert [t.start(), t.start()] == ["1/4", "2/4"]
    first = t.finish("ok", 100.0)
    assert first.startswith("1/4 jobs finished: 1 ok, 3 skipped (done before); ") and first.endswith("ETA ~2:30")
    second = t.finish("failed", 50.0)  # mean 75 s a job, 2 left, 2 at a time
    assert second.startswith("2/4 jobs finished: 1 failed, 1 ok, 3 skipped (done before)")
    assert second.endswith("ETA ~1:15")
    t.finish("ok", 90.0)
    last = t.finish("ok", 60.0)
    long = _Tally(total=12, skipped=0, parallel=2)  # 6 short jobs, then the long ones: the latest 4 set the pace
    for w in (5, 5, 5, 5, 160, 170):
        msg = long.finish("ok", w)
    assert msg.endswith("ETA ~" + clock((5 + 5 + 160 + 170) / 4 * 6 / 2))
    assert last.startswith("4/4 jobs finished: 1 failed, 3 ok, 3 skipped (done before)") and "ETA" not in last


def test_a_resumed_run_estimates_from_its_own_steps():
    now = Clock()
    p = Progress(100, stream=io.StringIO(), tty=False, now=now)
    now.t += 3.0
    assert p.update(51, samples=16).endswith("3 s elapsed, ETA 2:27")  # 3 s for its first step, 49 to go
