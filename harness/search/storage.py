"""Where a study lives and who may touch it: storage URLs, locks around \"count, then ask\", worker identity,
heartbeats and reaping trials whose worker died; opening (or resuming) a study."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import zlib
from pathlib import Path

from harness.config import ConfigError
from harness.search.space import _pruner, _sampler, directions, space_description, to_optuna_params

log = logging.getLogger("harness.search")

def storage_url(spec, output_root: str) -> str:
    s = spec.storage
    if not s:
        return f"sqlite:///{Path(output_root).resolve() / 'optuna.sqlite'}"
    if "://" not in s:  # a bare path: a SQLite file
        return f"sqlite:///{Path(s).resolve()}"
    return s


def public_url(url: str) -> str:
    """The storage URL without its password (it goes into records and reports)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)



# ============================================================================================ storage
def open_storage(url: str, heartbeat_s: int, max_retry: int):
    import optuna

    kwargs = {}
    if url.startswith("sqlite:"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                **kwargs)
        except Exception as e:
            # another process (a second worker's study, a dashboard, a reader) created the tables of a fresh
            # storage at the same moment: they exist now, so opening again finds them (seen: "table
            # trial_user_attributes already exists", the worker died)
            if attempt == 4 or not any(m in str(e) for m in _CREATED_CONCURRENTLY):
                raise
            time.sleep(0.2 * (attempt + 1))


_CREATED_CONCURRENTLY = ("already exists", "UNIQUE constraint failed", "duplicate key")


@contextlib.contextmanager
def study_lock(url: str, study: str):
    """Serialise "count trials, then ask for one" across workers: a file lock for SQLite (same machine), an
    advisory lock for PostgreSQL (any machine). Other databases: no lock (a study may overshoot n_trials by up
    to workers - 1)."""
    if url.startswith("sqlite:///"):
        import fcntl

        path = url[len("sqlite:///"):] + f".{study}.lock"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif url.startswith(("postgresql", "postgres")):
        import sqlalchemy as sa

        key = zlib.crc32(f"lora-harness:{study}".encode()) & 0x7FFFFFFF
        eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with eng.connect() as con:
            con.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                con.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        eng.dispose()
    else:
        yield


def worker_id() -> str:
    """host:pid:start-time (the start time tells a live process from a new one that reused the pid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _alive(wid: str) -> bool | None:
    """Whether the worker that wrote `wid` still runs; None when it ran on another host (ask the heartbeat)."""
    try:
        host, pid, start = wid.rsplit(":", 2)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start == "?" or _start_time(int(pid)) == start


def locks(url: str) -> bool:
    """Whether `study_lock` really locks this storage (SQLite, PostgreSQL)."""
    return url.startswith(("sqlite:///", "postgresql", "postgres"))


def reap_dead_trials(study, max_retry: int, locked: bool = True) -> list[int]:
    """Running trials whose worker died on this host -> failed, and their parameters queued again. `locked`: the
    caller holds the study lock (see run_worker), so an unnamed running trial is a dead worker's."""
    import optuna
    from optuna.trial import TrialState

    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # a worker asks for a trial and names itself on it under the study lock, which the caller holds: a
        # running trial with no name was asked by a worker that died between the two (a kill at that instant)
        wid = t.user_attrs.get("worker")
        if (wid is None and locked) or (wid is not None and _alive(wid) is False):
            try:
                study._storage.set_trial_user_attr(t._trial_id, "error", f"its worker ({wid or 'unnamed'}) died "
                                                                         "mid-trial (killed or out of memory)")
                if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    reaped.append(t.number)
                    retry(study, study._storage.get_trial(t._trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
    optuna.storages.fail_stale_trials(study)  # other hosts: by heartbeat
    return reaped


class _Heartbeat:
    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a missed beat is not worth killing the trial for
                log.warning("heartbeat failed: %s", e)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()



def open_study(spec, url: str, extra_attrs: dict | None = None):
    """Create or load the study; refuse to resume it with a different space or objective."""
    import optuna

    with study_lock(url, spec.study):  # also the storage: two workers creating its tables at once collide
        storage = open_storage(url, spec.heartbeat_s, spec.max_retry)
        study = optuna.create_study(study_name=spec.study, storage=storage, sampler=_sampler(spec),
                                    pruner=_pruner(spec), directions=directions(spec), load_if_exists=True)
        desc = space_description(spec)
        old = study.user_attrs.get("space")
        if old is None:
            study.set_user_attr("space", desc)
            for k, v in (extra_attrs or {}).items():
                study.set_user_attr(k, v)
            if not study.trials:
                for i, fixed in enumerate(spec.enqueue):
                    study.enqueue_trial(to_optuna_params(spec, dict(fixed)), user_attrs={"enqueued": i})
        elif old != desc:
            raise ConfigError(
                f"study {spec.study!r} in {public_url(url)} was created with a different search space or objective "
                f"({old}); this run asks for {desc}. Use another search.study name, or the same space to resume")
    return study




def counts(study) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


