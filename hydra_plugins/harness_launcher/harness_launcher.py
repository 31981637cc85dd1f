"""Hydra launcher `hydra/launcher=harness_local`: every job of a sweep in its own fresh Python process.

Why a fresh process: peak memory is a process's high-water mark, and allocator caches, imported kernels
and compiled graphs of one run must not leak into the next; a crash or an out-of-memory kill also takes
down only that run. The launcher
  - skips a job whose config hash already has an `ok` record in the results store (resume),
  - runs the others as `python -m harness.run <the job's overrides> hydra.run.dir=<its sweep subdir>`
    (the command is logged and kept in the job's `.hydra/` folder: any job can be re-run by hand),
  - records a job that died without writing a record (killed, out of memory, segfault) as `failed`,
  - goes on after a failed job and returns normally, so `make report` can list the failures.
With `n_jobs > 1` that many jobs run at once (each still a fresh process).
"""


import copy
import logging
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger("harness.launcher")


@dataclass
class HarnessLauncherConf:
    _target_: str = "hydra_plugins.harness_launcher.harness_launcher.HarnessLauncher"
    n_jobs: int = 1  # jobs running at once; each is its own process
    resume: bool = True  # skip jobs whose config hash already has an ok record
    timeout_min: Optional[float] = None  # kill a job after this many minutes (recorded as failed)
    python: Optional[str] = None  # interpreter for the jobs (default: this one)


ConfigStore.instance().store(group="hydra/launcher", name="harness_local", node=HarnessLauncherConf,
                             provider="lora-harness")


def job_identity(sweep_config: DictConfig) -> tuple[dict, str]:
    """(resolved task config, config hash) exactly as the job's own run will compute them."""
    from harness.config import resolved
    from harness.records import config_hash

    task_cfg = copy.deepcopy(sweep_config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    rcfg = resolved(task_cfg)
    return rcfg, config_hash(rcfg)


class _Tally:
    """A batch's progress for the log: "job k/N" when a job starts; "done/failed/skipped so far, ETA" when one ends
    (the latest finished jobs' mean wall time x the jobs left / the jobs run at once: `progress.eta`)."""

    def __init__(self, total: int, skipped: int, parallel: int):
        import threading

        self.total, self.skipped, self.parallel = total, skipped, parallel
        self.started, self.walls, self.counts = 0, [], {}
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()

    def start(self) -> str:
        with self.lock:
            self.started += 1
            return f"{self.started}/{self.total}"

    def finish(self, status: str, wall: float) -> str:
        from harness.progress import clock, eta

        with self.lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            self.walls.append(wall)
            done = sum(self.counts.values())
            elapsed = time.perf_counter() - self.t0
            # the latest jobs' mean: a grid runs its kinds in order (fine-tuning methods one after another, its
            # short baselines last), so the jobs just done say more about the ones left than the first ones do
            recent = self.walls[-max(4, 2 * self.parallel):]
            left = eta(len(recent), len(recent) + self.total - done, sum(recent), self.parallel)
            parts = [f"{n} {k}" for k, n in sorted(self.counts.items())] + (
                [f"{self.skipped} skipped (done before)"] if self.skipped else [])
            return (f"{done}/{self.total} jobs finished: {', '.join(parts)}; {clock(elapsed)} elapsed"
                    + (f", ETA ~{clock(left)}" if done < self.total else ""))


class HarnessLauncher(Launcher):
    def __init__(self, n_jobs: int = 1, resume: bool = True, timeout_min: Optional[float] = None,
                 python: Optional[str] = None) -> None:
        if n_jobs < 1:
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs!r}: it must be >= 1")
        self.n_jobs, self.resume, self.timeout_min = n_jobs, resume, timeout_min
        self.python = python or sys.executable
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    # ------------------------------------------------------------------------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from harness.records import RECORD_NAME
        from harness.store import Store

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        store = Store(str(self.config.paths.output_root))
        rep = store.sync()
        done = store.done_hashes() if self.resume else {}
        log.info("results store %s: %s; %d jobs in this batch", store.index_path, rep, len(job_overrides))

        jobs = []
        returns: list[Optional[JobReturn]] = [None] * len(job_overrides)
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            HydraConfig.instance().set_config(sweep_config)
            out_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
            rcfg, chash = job_identity(sweep_config)
            shown = " ".join(filter_overrides(overrides))
            ret = JobReturn(overrides=list(overrides), cfg=None, hydra_cfg=None, working_dir=str(out_dir),
                            task_name=str(sweep_config.hydra.job.name), status=JobStatus.COMPLETED)
            if chash in done:
                log.info("#%d skip (ok record %s): %s", idx, done[chash], shown)
                ret.return_value = {"status": "skipped", "config_hash": chash, "record": done[chash]}
                returns[i] = ret
                continue
            jobs.append((i, idx, list(overrides), out_dir.resolve(), rcfg, chash, ret))

        log.info("launching %d jobs (%d skipped), %d at a time, each in a fresh process",
                 len(jobs), len(job_overrides) - len(jobs), self.n_jobs)

        tally = _Tally(len(jobs), len(job_overrides) - len(jobs), self.n_jobs)

        def run_one(job):
            i, idx, overrides, out_dir, rcfg, chash, ret = job
            status = self._run_job(idx, overrides, out_dir, rcfg, chash, store, RECORD_NAME, tally)
            ret.return_value = status
            returns[i] = ret

        if self.n_jobs == 1:
            for job in jobs:
                run_one(job)
        else:
            with ThreadPoolExecutor(self.n_jobs) as pool:
                list(pool.map(run_one, jobs))
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        counts: dict[str, int] = {}
        for r in returns:
            s = r.return_value["status"] if r is not None else "missing"
            counts[s] = counts.get(s, 0) + 1
        log.info("batch done: %s", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        return [r for r in returns if r is not None]

    def _run_job(self, idx, overrides, out_dir, rcfg, chash, store, record_name, tally=None) -> dict:
        from harness.profile import process_env

        out_dir.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "harness.run", *overrides, f"hydra.run.dir={out_dir}"]
        (out_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
        env = {**os.environ, **process_env(os.environ), "HARNESS_LAUNCHED": "1", "TOKENIZERS_PARALLELISM": "false"}
        if self.n_jobs > 1:  # share the cores: a run with train.threads=0 takes its share, not every core
            share = max(1, (os.cpu_count() or 1) // self.n_jobs)  # and never more than a cap set from outside
            env["HARNESS_THREADS"] = str(min(share, int(os.environ.get("HARNESS_THREADS") or share)))
        log.info("#%d start%s: %s", idx, f" (job {tally.start()})" if tally else "",
                 " ".join(filter_overrides(overrides)))
        t0 = time.perf_counter()
        timeout = None if self.timeout_min is None else self.timeout_min * 60
        with open(out_dir / "output.log", "ab") as logf:
            try:
                proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=timeout)
                rc, why = proc.returncode, None
            except subprocess.TimeoutExpired:
                rc, why = None, f"killed after the {self.timeout_min} min job timeout (hydra.launcher.timeout_min)"
        wall = time.perf_counter() - t0
        rec_path = out_dir / record_name
        if rec_path.exists():
            from harness.records import read_record

            try:
                rec = read_record(rec_path)
            except ValueError as e:
                rec = {"status": "failed", "error": f"unreadable record: {e}"}
            status = rec.get("status", "failed")
            detail = _summary(rec)
        elif rc is not None and rc < 0 and -rc == 2:  # SIGINT: the user stopped the sweep
            raise KeyboardInterrupt
        else:
            why = why or _describe_exit(rc)
            status, detail = "failed", why
            self._write_failed(rec_path, rcfg, chash, why, out_dir)
        try:
            store.add(rec_path)
        except Exception as e:  # the record file is the truth; the index catches up at the next sync
            log.warning("could not index %s: %s", rec_path, e)
        log.info("#%d %s in %.0f s: %s (log: %s)%s", idx, status, wall, detail, out_dir / "output.log",
                 f"\n  {tally.finish(status, wall)}" if tally else "")
        return {"status": status, "config_hash": chash, "record": str(rec_path)}

    @staticmethod
    def _write_failed(rec_path: Path, rcfg: dict, chash: str, why: str, out_dir: Path) -> None:
        from harness.records import SCHEMA_VERSION, write_json_atomic

        tail = ""
        try:
            tail = "".join((out_dir / "output.log").read_text(errors="replace").splitlines(True)[-40:])
        except OSError:
            pass
        write_json_atomic(rec_path, {
            "schema_version": SCHEMA_VERSION, "run_id": out_dir.name, "experiment": rcfg.get("experiment_name"),
            "status": "failed", "config_hash": chash, "config": rcfg, "tags": rcfg.get("tags", {}),
            "seed": rcfg.get("train", {}).get("seed"), "error": why, "traceback": tail,
            "finished_at": datetime.now(timezone.utc).isoformat(), "recorded_by": "launcher",
        })


def _describe_exit(rc) -> str:
    import signal

    if rc is None:
        return "no exit status"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -rc == 9 else ""
        return f"the run's process was killed by {name}{hint} before writing its record"
    return f"the run's process exited with code {rc} without writing a record (see output.log)"


def _summary(rec: dict) -> str:
    if rec.get("status") != "ok":
        return str(rec.get("error", ""))[:300]
    from harness.store import headline

    metric, value = headline(rec)
    try:
        return (f"{metric} {value:.4f}, {rec['throughput']['tokens_per_s']:.0f} tok/s, "
                f"peak {rec['memory']['peak_mb']:.0f} MB")
    except (KeyError, TypeError):
        return "ok"
