"""Optuna search over run configs: rank, alpha, learning rate, target matrices (conf/search/*.yaml).

    python -m harness.search search=mrpc_minilm                 # run (or resume) the study, then its report
    python -m harness.search search=mrpc_minilm --workers 2     # two worker processes on one study
    python -m harness.search search=mrpc_minilm search.storage=postgresql://user@db-host/optuna   # several machines
    python -m harness.search search=mrpc_minilm --confirm       # best trial vs the default on dev, several seeds
    python -m harness.search search=mrpc_minilm --report-only   # reports/search/<study>/README.md from the study

Every trial is an ordinary run (harness.runner.execute) of the config composed from the search's `base` overrides,
the command line's overrides and the trial's parameters; its record is tagged with the study and trial number
and lands in the results store like any other (experiment `search/<study>`). Evaluations during training
(train.eval_every) are reported to the pruner; a pruned trial is recorded as `pruned`, not failed.

The study lives in an SQLAlchemy storage (SQLite file by default). Rerunning the same study name resumes it:
`search.n_trials` counts finished trials (complete + pruned) over all runs and workers. A trial whose worker
died (killed, out of memory) is marked failed and its parameters are tried again: at once when the worker ran on
this host (its process is gone), otherwise when its heartbeat is older than 3 x `search.heartbeat_s`. Workers
take a lock (a file lock next to a SQLite file, an advisory lock on PostgreSQL) around "count, then ask for a
trial", so N workers finish exactly `n_trials` between them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

from harness.config import ConfigError, compose
from harness.progress import clock, eta

log = logging.getLogger("harness.search")

DEFAULT_SEARCH = "mrpc_minilm"
STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# objectives read from the record rather than the task's metrics: name -> (path in the record, direction hint)
COSTS = {
    "peak_memory_mb": ("memory", "peak_mb"),
    "trainable_params": ("params", "trainable"),
    "train_s": ("times", "train_s"),
    "tokens_per_s": ("throughput", "tokens_per_s"),
}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
FINISHED = ("COMPLETE", "PRUNED")


# ============================================================================================ config
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: list[str]) -> list[str]:
    """Later groups win for the same key (base < command line < trial parameters); order otherwise kept."""
    out: dict[str, str] = {}
    for group in groups:
        for o in group:
            if "=" not in o:
                raise ConfigError(f"override {o!r} is not of the form key=value")
            out.pop(_key(o), None)
            out[_key(o)] = o
    return list(out.values())


def param_key(name: str, p) -> str:
    """The run config value a search parameter sets."""
    return p.key or name


def rank_param(spec) -> str | None:
    """The name of the parameter that sets lora.r (multiple_of_r multiplies by it)."""
    return next((n for n, p in spec.params.items() if param_key(n, p) == "lora.r"), None)


def param_overrides(spec, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna parameters -> {run config key: value} (alpha given as a multiple of r becomes alpha)."""
    out = {}
    r_name = rank_param(spec)
    for name, p in spec.params.items():
        value = params[_optuna_name(name, p)]
        if _ptype(p) == "multiple_of_r":
            if r_name is None:
                raise ConfigError(f"search.params.{name}: multiple_of_r needs a parameter with key lora.r")
            value = float(value) * float(params[r_name])
        out[param_key(name, p)] = value
    return out


def _ptype(p) -> str:
    return str(getattr(p.type, "value", p.type))


def _optuna_name(name: str, p) -> str:
    return f"{name}/r" if _ptype(p) == "multiple_of_r" else name


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _override(name: str, value: Any) -> str:
    return f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}"


def validate_search(spec, cfg, base: list[str] = (), user_overrides: list[str] = ()) -> None:
    """Check a search space before any model loads; raise ConfigError naming the bad value and the valid ones.
    `cfg` is the run config composed from `base` (the overrides every trial starts from)."""
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from harness.config import kind_of, validate

    if not STUDY_RE.match(str(spec.study)):
        raise ConfigError(f"search.study={spec.study!r} is not valid: use letters, digits, '_', '.', '-' "
                          "(it names a folder under the output root)")
    if spec.n_trials < 1:
        raise ConfigError(f"search.n_trials={spec.n_trials} is out of range: it must be >= 1")
    if not spec.params:
        raise ConfigError("search.params is empty: name at least one run config value to search (e.g. lora.r)")
    if spec.heartbeat_s < 1:
        raise ConfigError(f"search.heartbeat_s={spec.heartbeat_s} is out of range: it must be >= 1")
    keys = [param_key(n, p) for n, p in spec.params.items()]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"search.params: two parameters set the same run config value ({keys})")
    for name, p in spec.params.items():
        where = f"search.params.{name}"
        key = param_key(name, p)
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"{where}: key {key!r} is not a value of the run config (e.g. lora.r, lora.alpha, "
                              "train.lr, lora.targets, lora.dropout)")
        if key in {_key(o) for o in user_overrides}:
            raise ConfigError(f"{where} searches {key}, so it cannot also be set on the command line; drop one")
        kind = _ptype(p)
        if kind in ("categorical", "multiple_of_r"):
            if not p.choices:
                raise ConfigError(f"{where}: type {kind} needs a non-empty `choices` list")
            if p.low is not None or p.high is not None:
                raise ConfigError(f"{where}: type {kind} takes `choices`, not low/high")
            if len(set(map(str, p.choices))) != len(p.choices):
                raise ConfigError(f"{where}: choices {list(p.choices)} repeat a value")
            if kind == "multiple_of_r":
                if key != "lora.alpha":
                    raise ConfigError(f"{where}: multiple_of_r is for lora.alpha only (key: lora.alpha)")
                if rank_param(spec) is None:
                    raise ConfigError(f"{where}: multiple_of_r needs a parameter with key lora.r in search.params")
                if any(not isinstance(c, (int, float)) or c <= 0 for c in p.choices):
                    raise ConfigError(f"{where}: multiple_of_r choices must be positive numbers, got {list(p.choices)}")
        else:
            if p.choices:
                raise ConfigError(f"{where}: type {kind} takes low/high, not `choices` (use type: categorical)")
            if p.low is None or p.high is None:
                raise ConfigError(f"{where}: type {kind} needs both low and high")
            if not p.low < p.high:
                raise ConfigError(f"{where}: low={p.low} high={p.high} is an empty range (low must be < high)")
            if p.log and p.low <= 0:
                raise ConfigError(f"{where}: log: true needs low > 0, got low={p.low}")
            if p.step is not None and (p.step <= 0 or p.log):
                raise ConfigError(f"{where}: step={p.step} must be > 0 and cannot be combined with log: true")
            if kind == "int" and (p.low != int(p.low) or p.high != int(p.high)):
                raise ConfigError(f"{where}: type int needs integer low/high, got {p.low}, {p.high}")
    task_metrics = list(cfg.task.metrics)
    splits = run_eval_splits(cfg.task)
    objectives = [("search.objective", spec.objective)]
    if spec.second_objective is not None:
        objectives.append(("search.second_objective", spec.second_objective))
    for where, o in objectives:
        if o.metric not in task_metrics + ["loss"] + list(COSTS):
            raise ConfigError(f"{where}.metric={o.metric!r} is not valid for task {cfg.task.name!r} "
                              f"({kind_of(cfg.task)}); valid: {task_metrics + ['loss'] + sorted(COSTS)}")
        if o.split is not None and o.split not in splits:
            raise ConfigError(f"{where}.split={o.split!r} is not an eval split of task {cfg.task.name!r}; "
                              f"valid: {splits}")
    if spec.objective.metric in COSTS:
        raise ConfigError(f"search.objective.metric={spec.objective.metric!r} is a cost; put a task metric "
                          f"({task_metrics}) first and the cost in search.second_objective")
    if spec.sampler.name not in SAMPLERS:
        raise ConfigError(f"search.sampler.name={spec.sampler.name!r} is not valid; valid: {list(SAMPLERS)}")
    if spec.pruner.name not in PRUNERS:
        raise ConfigError(f"search.pruner.name={spec.pruner.name!r} is not valid; valid: {list(PRUNERS)}")
    if spec.pruner.name != "none" and int(cfg.train.eval_every) <= 0:
        raise ConfigError(f"search.pruner.name={spec.pruner.name!r} needs evaluations during training to prune on: "
                          "set train.eval_every > 0 (in search.base), or search.pruner.name=none")
    for i, fixed in enumerate(spec.enqueue):
        to_optuna_params(spec, dict(fixed), where=f"search.enqueue[{i}]")
    # every value the space can take must make a valid run config (checked with the run's own validation)
    for name, p in spec.params.items():
        kind = _ptype(p)
        if kind == "multiple_of_r":
            continue
        values = list(p.choices) if kind == "categorical" else [p.low, p.high]
        for v in values:
            v = int(v) if kind == "int" else v
            try:
                c = compose(merge_overrides(list(base), [_override(param_key(name, p), v)]))
                validate(c)
            except ConfigError as e:
                raise ConfigError(f"search.params.{name}: the value {v!r} makes an invalid run: {e}") from None
            except ConfigCompositionException as e:  # a value the schema refuses (an enum's unknown option)
                why = str(e.__cause__ or e).splitlines()[0]
                raise ConfigError(f"search.params.{name}: the value {v!r} makes an invalid run: {why}") from None


def to_optuna_params(spec, fixed: dict[str, Any], where: str = "fixed parameters") -> dict[str, Any]:
    """Fixed values by parameter name (as a user writes them, alpha as alpha) -> the study's parameters."""
    unknown = sorted(set(fixed) - set(spec.params))
    if unknown:
        raise ConfigError(f"{where}: {unknown} are not searched parameters; searched: {sorted(spec.params)}")
    out = {}
    r_name = rank_param(spec)
    for name, v in fixed.items():
        p = spec.params[name]
        kind = _ptype(p)
        if kind == "multiple_of_r":
            if r_name not in fixed:
                raise ConfigError(f"{where}: {name} (alpha) needs {r_name} (r) beside it")
            v = float(v) / float(fixed[r_name])
        if kind in ("categorical", "multiple_of_r"):
            match = [c for c in p.choices if c == v or str(c) == str(v)]
            if not match:
                raise ConfigError(f"{where}: {name}={fixed[name]!r} is outside the space; choices: "
                                  f"{list(p.choices) if kind == 'categorical' else [c * fixed[r_name] for c in p.choices]}")
            v = match[0]
        elif not p.low <= float(v) <= p.high:
            raise ConfigError(f"{where}: {name}={v!r} is outside the space [{p.low}, {p.high}]")
        out[_optuna_name(name, p)] = v
    return out


def suggest(trial, spec) -> dict[str, Any]:
    """Ask the trial for every parameter of the space; returns run config values."""
    raw = {}
    for name, p in spec.params.items():
        kind, oname = _ptype(p), _optuna_name(name, p)
        if kind in ("categorical", "multiple_of_r"):
            raw[oname] = trial.suggest_categorical(oname, list(p.choices))
        elif kind == "int":
            raw[oname] = trial.suggest_int(oname, int(p.low), int(p.high), step=int(p.step or 1), log=bool(p.log))
        else:
            raw[oname] = trial.suggest_float(oname, float(p.low), float(p.high), step=p.step, log=bool(p.log))
    return param_overrides(spec, raw)


def directions(spec) -> list[str]:
    objs = [spec.objective] + ([spec.second_objective] if spec.second_objective is not None else [])
    return [str(getattr(o.direction, "value", o.direction)) for o in objs]


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


def _sampler(spec, trial_number: int = 0):
    """Seeded with search.sampler.seed + the number of the trial it is about to draw (run_worker makes one per ask):
    one seed gives the same trials on a fresh study, while a resumed study, or a second worker, draws new ones. A
    sampler seeded once per process replayed its first draws on every resume: the mrpc_minilm study's trials 4 and
    5 repeated trials 1 and 2's parameters."""
    import optuna

    s = spec.sampler
    seed = None if s.seed is None else int(s.seed) + trial_number
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                      multivariate=True, constant_liar=True)


def _pruner(spec):
    import optuna

    p = spec.pruner
    if p.name == "none" or spec.second_objective is not None:  # Optuna cannot prune multi-objective trials
        return optuna.pruners.NopPruner()
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def describe_sampler(spec) -> str:
    s = spec.sampler
    if s.name == "random":
        return f"random (seed {s.seed} + trial number)"
    return f"TPE (seed {s.seed} + trial number, {s.n_startup_trials} random startup trials, multivariate, constant liar)"


def describe_pruner(spec) -> str:
    p = spec.pruner
    if spec.second_objective is not None:
        return "none (Optuna cannot prune multi-objective trials)"
    if p.name == "median":
        return (f"median (a trial below the median of earlier trials at the same step stops; the first "
                f"{p.n_startup_trials} trials are never pruned" +
                (f", nor any trial before step {p.n_warmup_steps})" if p.n_warmup_steps else ")"))
    if p.name == "hyperband":
        return f"Hyperband (min resource {p.min_resource} steps, reduction factor {p.reduction_factor})"
    return "none"


def space_description(spec) -> dict:
    """What must not change when a study is resumed: the space and the objectives (stored with the study)."""
    from omegaconf import OmegaConf

    def plain(x):
        return OmegaConf.to_container(x, resolve=True, enum_to_str=True)

    return {
        "params": plain(spec.params),
        "directions": directions(spec),
        "objectives": [plain(spec.objective)] + ([plain(spec.second_objective)] if spec.second_objective else []),
    }


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


# ============================================================================================ the loop
def counts(study) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def run_worker(spec, url: str, objective: Callable, *, echo: Callable[[str], None] = print,
               extra_attrs: dict | None = None, max_consecutive_failures: int = 3) -> dict[str, int]:
    """Ask for trials and run `objective(trial)` until the study holds `spec.n_trials` finished (or running)
    trials. `objective` returns the value (a tuple for two objectives) or raises optuna.TrialPruned."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # we run Optuna's heartbeat ourselves (ask/tell, so that asking is under our lock), and use its
    # stale-trial helpers, which it marks experimental
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    study = open_study(spec, url, extra_attrs)
    me = worker_id()
    failures = 0
    while True:
        with study_lock(url, spec.study):
            reaped = reap_dead_trials(study, spec.max_retry, locked=locks(url))
            for n in reaped:
                echo(f"[{spec.study}] trial {n}: its worker died; marked failed and queued again")
            c = counts(study)
            if c["COMPLETE"] + c["PRUNED"] + c["RUNNING"] >= spec.n_trials:
                break
            study.sampler = _sampler(spec, len(study.get_trials(deepcopy=False)))
            trial = study.ask()
            trial.set_user_attr("worker", me)
        t0 = time.time()
        values, state, note = None, TrialState.COMPLETE, ""
        with _Heartbeat(study._storage, trial._trial_id, spec.heartbeat_s):
            try:
                values = objective(trial)
                failures = 0
            except optuna.TrialPruned as e:
                state, note = TrialState.PRUNED, str(e)
                failures = 0
            except KeyboardInterrupt:
                study.tell(trial, state=TrialState.FAIL)
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)(
                    study, study._storage.get_trial(trial._trial_id))
                raise
            except Exception as e:
                state, note = TrialState.FAIL, f"{type(e).__name__}: {e}"
                trial.set_user_attr("error", note[:2000])
                failures += 1
        trial.set_user_attr("seconds", time.time() - t0)
        if state == TrialState.COMPLETE:
            vals = values if isinstance(values, (tuple, list)) else [values]
            if any(v is None or not math.isfinite(float(v)) for v in vals):
                state, note = TrialState.FAIL, f"objective value {vals} is not finite"
                trial.set_user_attr("error", note)
                failures += 1
                values = None
        if state == TrialState.COMPLETE:
            study.tell(trial, values)
        else:
            study.tell(trial, state=state)
        echo(progress_line(spec, study, trial.number, state.name, values, trial.params, time.time() - t0, note))
        if failures >= max_consecutive_failures:
            raise RuntimeError(f"study {spec.study!r}: {failures} trials in a row failed; the last: {note} "
                               "(their records are in the results store: python -m harness.store --failed)")
    return counts(study)


def progress_line(spec, study, number: int, state: str, values, params: dict, seconds: float, note: str) -> str:
    c = counts(study)
    metric = spec.objective.metric
    if values is None:
        val = state.lower() + (f" ({note})" if note else "")
    else:
        vals = values if isinstance(values, (tuple, list)) else [values]
        names = [metric] + ([spec.second_objective.metric] if spec.second_objective is not None else [])
        val = " ".join(f"{n}={v:.4g}" for n, v in zip(names, vals))
    p = " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items())
    best = ""
    if spec.second_objective is None:
        with contextlib.suppress(ValueError):
            b = study.best_trial
            best = f" | best {b.value:.4g} (#{b.number})"
    finished = c["COMPLETE"] + c["PRUNED"]
    took = [t.user_attrs["seconds"] for t in study.get_trials(deepcopy=False) if "seconds" in t.user_attrs]
    # trials still to finish, at the mean time a trial took, as many at once as are running now (this one included)
    left = eta(len(took), len(took) + max(0, spec.n_trials - finished), sum(took), c["RUNNING"] + 1) if took else None
    return (f"[{spec.study}] trial {number} {state:<8} {val}  {p}  {seconds:.0f} s{best} | "
            f"{finished}/{spec.n_trials} finished ({c['COMPLETE']} complete, {c['PRUNED']} pruned), "
            f"{c['FAIL']} failed" + (f", ETA ~{clock(left)}" if left else ""))


# ============================================================================================ trials = runs
class RunObjective:
    """One trial = one ordinary run of the composed config, in this process; evaluations feed the pruner."""

    def __init__(self, spec, overrides: list[str], output_root: str, url: str):
        self.spec, self.overrides, self.output_root, self.url = spec, overrides, output_root, url

    def config(self, trial_number: int, values: dict[str, Any]):
        from omegaconf import open_dict

        ovr = merge_overrides(self.overrides, [_override(k, v) for k, v in values.items()])
        cfg = compose(ovr)
        with open_dict(cfg):
            cfg.experiment_name = f"search/{self.spec.study}"
            cfg.tags = {**dict(cfg.tags or {}), "study": self.spec.study, "trial": trial_number,
                        "storage": public_url(self.url), "search_params": dict(values),
                        "overrides": ovr}
        return cfg

    def __call__(self, trial):
        import optuna

        from harness import records
        from harness.config import resolved
        from harness.runner import execute
        from harness.store import Store
        from harness.train import Pruned

        values = suggest(trial, self.spec)
        cfg = self.config(trial.number, values)
        h = records.config_hash(resolved(cfg))
        trial.set_user_attr("config_hash", h)
        store = Store(cfg.paths.output_root)
        store.sync()
        done = store.done(h)
        if done:  # the same configuration already ran (this study or another): reuse its record
            trial.set_user_attr("record", done)
            trial.set_user_attr("reused", True)
            rec = records.read_record(Path(cfg.paths.output_root) / done)
            return self.objective_values(rec, self.spec.objective.split or rec["metrics"]["headline"]["split"])
        out_dir = Path(cfg.paths.output_root) / "search" / self.spec.study / f"trial_{trial.number:04d}"
        trial.set_user_attr("record", str(out_dir.relative_to(cfg.paths.output_root) / records.RECORD_NAME))
        split = self.spec.objective.split or run_eval_splits(cfg.task)[0]
        metric = self.spec.objective.metric
        history: list[dict] = []
        prune = self.spec.second_objective is None and self.spec.pruner.name != "none"

        def on_evaluate(step: int, metrics: dict) -> None:
            v = metrics.get(split, {}).get(metric)
            if v is None:
                return
            history.append({"step": step, "value": v})
            if prune:
                trial.report(float(v), step)
                if trial.should_prune():
                    raise Pruned(step, v, history)

        # the run's log, the Trainer's printed losses and progress bars go to the trial's output.log
        handler = _trial_log(out_dir)
        try:
            with open(out_dir / "output.log", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                rec = execute(cfg, out_dir, on_evaluate=on_evaluate)
        except Pruned as e:
            raise optuna.TrialPruned(f"at step {e.step}, {metric}={e.value:.4g}") from None
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        return self.objective_values(rec, split)

    def objective_values(self, rec: dict, split: str):
        vals = [record_value(rec, self.spec.objective.metric, split)]
        if self.spec.second_objective is not None:
            s2 = self.spec.second_objective.split or split
            vals.append(record_value(rec, self.spec.second_objective.metric, s2))
        return vals[0] if len(vals) == 1 else tuple(vals)


def run_eval_splits(task) -> list[str]:
    """The splits a run evaluates on: the carved one alone when choosing a recipe (task.tune), else the task's."""
    from harness.tasks.data import CARVED

    return [CARVED] if task.get("tune") else list(task.eval_splits)


def record_value(rec: dict, metric: str, split: str) -> float:
    """An objective's value from a result record: a task metric on `split`, or one of COSTS."""
    if metric in COSTS:
        a, b = COSTS[metric]
        return float((rec.get(a) or {}).get(b))
    return float(rec["metrics"]["final"][split][metric])


def _trial_log(out_dir: Path) -> logging.Handler:
    out_dir.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(out_dir / "output.log")
    h.setLevel(logging.INFO)
    h.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(h)
    root.setLevel(logging.INFO)
    return h


# ============================================================================================ entry point
USAGE = """usage: python -m harness.search [search=<name>] [search.KEY=VALUE ...] [run overrides ...]
                          [--workers N] [--confirm] [--report-only] [--no-report] [--out reports]"""


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    opts = {"workers": 1, "report_only": False, "no_report": False, "out": "reports", "worker": False,
            "confirm": False}
    overrides = []
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            print(USAGE + "\n\n" + __doc__)
            raise SystemExit(0)
        if a.startswith("--workers"):
            v = a.split("=", 1)[1] if "=" in a else next(it, "")
            if not v.isdigit() or int(v) < 1:
                raise ConfigError(f"--workers={v!r} is not valid: give a whole number >= 1")
            opts["workers"] = int(v)
        elif a == "--report-only":
            opts["report_only"] = True
        elif a == "--no-report":
            opts["no_report"] = True
        elif a == "--confirm":
            opts["confirm"] = True
        elif a == "--worker":  # internal: a worker started by another (no report, no children)
            opts["worker"] = True
        elif a.startswith("--out"):
            opts["out"] = a.split("=", 1)[1] if "=" in a else next(it, "reports")
        elif a.startswith("-"):
            raise ConfigError(f"unknown option {a!r}\n{USAGE}")
        else:
            overrides.append(a)
    if not any(_key(o) == "search" for o in overrides):
        overrides.insert(0, f"search={DEFAULT_SEARCH}")
    return opts, overrides


def load(overrides: list[str]):
    """(search spec, the trials' base overrides, a composed run config for checks) from the command line."""
    is_search = [_key(o) == "search" or _key(o).startswith("search.") for o in overrides]
    search_ovr = merge_overrides([o for o, s in zip(overrides, is_search) if s])
    run_ovr = [o for o, s in zip(overrides, is_search) if not s]
    spec = compose(search_ovr).search
    if spec is None:
        raise ConfigError("no search space selected: pass search=<name> (conf/search/)")
    base = merge_overrides(search_ovr, list(spec.base), run_ovr)
    cfg = compose(base)
    return cfg.search, base, cfg, run_ovr


def main(argv: list[str] | None = None) -> int:
    from harness.runner import reexec_with_process_env

    reexec_with_process_env("harness.search")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for h in logging.getLogger().handlers:  # the console shows one line per trial; runs log to their output.log
        h.setLevel(logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        opts, overrides = parse_args(argv)
        spec, base, cfg, run_ovr = load(overrides)
        validate_search(spec, cfg, base, run_ovr)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    url = storage_url(spec, cfg.paths.output_root)
    if opts["report_only"]:
        return _report(spec, url, cfg, opts)
    if opts["confirm"]:
        rc = confirm(spec, url, base, opts["workers"])
        return rc if rc or opts["no_report"] else _report(spec, url, cfg, opts)
    workers = opts["workers"]
    if workers > 1 and not any(_key(o) == "train.threads" for o in base):
        base = merge_overrides(base, [f"train.threads={max(1, (os.cpu_count() or 1) // workers)}"])
    children = []
    if not opts["worker"]:
        print(f"[{spec.study}] study in {public_url(url)}: {spec.n_trials} trials, {workers} worker(s); "
              f"objective {spec.objective.metric} ({directions(spec)[0]}); pruner "
              f"{'none (two objectives)' if spec.second_objective is not None else spec.pruner.name}", flush=True)
        for _ in range(workers - 1):
            children.append(subprocess.Popen([sys.executable, "-m", "harness.search", *base, "--worker"]))
    objective = RunObjective(spec, base, cfg.paths.output_root, url)
    rc = 0
    try:
        c = run_worker(spec, url, objective, echo=lambda s: print(s, flush=True),
                       extra_attrs={"base": [o for o in base if _key(o) != "search" and not o.startswith("search.")],
                                    "command": "python -m harness.search " + " ".join(
                                        o for o in overrides if not o.startswith("paths.")),
                                    "sampler": describe_sampler(spec), "pruner": describe_pruner(spec),
                                    "created_by": worker_id()})
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 1
    finally:
        for p in children:
            rc = max(rc, p.wait())
    if opts["worker"]:
        return rc
    if rc == 0:
        print(f"[{spec.study}] done: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed", flush=True)
    if not opts["no_report"]:
        rc = max(rc, _report(spec, url, cfg, opts))
    return rc


def confirm_experiment(study: str) -> str:
    return f"confirm/{study}"


def confirm_jobs(spec, study) -> list[tuple[str, dict[str, Any]]]:
    """[(label, {run config key: value})]: the best complete trial and the first enqueued trial (the default)."""
    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.values]
    if not done:
        raise ConfigError(f"study {spec.study!r} has no complete trial to confirm: run the search first")
    sign = 1 if directions(spec)[0] == "maximize" else -1
    best = max(done, key=lambda t: sign * t.values[0])
    out = [(f"best (trial {best.number})", param_overrides(spec, best.params))]
    default = next((t for t in study.trials if "enqueued" in t.user_attrs and t.state.name == "COMPLETE"), None)
    if default is not None and default.number != best.number:
        out.append((f"default (trial {default.number})", param_overrides(spec, default.params)))
    return out


def confirm(spec, url: str, base: list[str], workers: int = 1) -> int:
    """Rerun the best trial and the default with `search.confirm_seeds` and `search.confirm_overrides` (the full
    dev split) as an ordinary multirun, experiment confirm/<study>: the report sets them side by side, paired by
    seed. Already finished runs are skipped, so this resumes."""
    import optuna

    study = optuna.load_study(study_name=spec.study, storage=open_storage(url, spec.heartbeat_s, spec.max_retry))
    jobs = confirm_jobs(spec, study)
    run_base = [o for o in base if _key(o) != "search" and not o.startswith("search.")]
    rc = 0
    for label, params in jobs:
        ovr = merge_overrides(run_base, [_override(k, v) for k, v in params.items()], list(spec.confirm_overrides),
                              [f"experiment_name={confirm_experiment(spec.study)}",
                               "train.seed=" + ",".join(str(int(s)) for s in spec.confirm_seeds)])
        if workers > 1:
            ovr.append(f"hydra.launcher.n_jobs={workers}")
        print(f"[{spec.study}] confirm {label}: " + " ".join(ovr), flush=True)
        rc = max(rc, subprocess.call([sys.executable, "-m", "harness.run", "-m", *ovr]))
    return rc


def _report(spec, url: str, cfg, opts) -> int:
    from harness.report.search import render_search
    from harness.store import Store

    path = render_search(spec.study, url, Store(cfg.paths.output_root), Path(opts["out"]))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
