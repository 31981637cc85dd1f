"""The worker loop (ask, run, tell, until the study has its trials) and the objective that runs each trial as an
ordinary harness run; the --confirm re-run of the best trial."""

from __future__ import annotations

import contextlib
import logging
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from harness.config import ConfigError, compose
from harness.progress import clock, eta
from harness.search.space import (COSTS, _fmt, _key, _override, _sampler, directions, merge_overrides,
                                  param_overrides, run_eval_splits, suggest)
from harness.search.storage import (_Heartbeat, counts, locks, open_storage, open_study, public_url,
                                    reap_dead_trials, study_lock, worker_id)

log = logging.getLogger("harness.search")


# ============================================================================================ the loop
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
        ovr = merge_overrides(self.overrides, [_override(k, v) for k, v in values.items()])
        cfg = compose(ovr)
        cfg.experiment_name = f"search/{self.spec.study}"
        cfg.tags = {**dict(cfg.tags or {}), "study": self.spec.study, "trial": trial_number,
                    "storage": public_url(self.url), "search_params": dict(values), "overrides": ovr}
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
        trial.set_user_attr("config_hash", records.config_hash(resolved(cfg)))
        done = Store(cfg.paths.output_root).done_for(cfg)
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
    for i, (label, params) in enumerate(jobs):
        ovr = merge_overrides(run_base, [_override(k, v) for k, v in params.items()], list(spec.confirm_overrides),
                              [f"experiment_name={confirm_experiment(spec.study)}",
                               "train.seed=" + ",".join(str(int(s)) for s in spec.confirm_seeds)])
        if i == 0 and spec.confirm_baselines:  # once: the baselines' runs are the same for both configurations
            ovr.append("hydra.sweeper.baselines=[" + ",".join(map(str, spec.confirm_baselines)) + "]")
        if workers > 1:
            ovr.append(f"hydra.launcher.n_jobs={workers}")
        print(f"[{spec.study}] confirm {label}: " + " ".join(ovr), flush=True)
        rc = max(rc, subprocess.call([sys.executable, "-m", "harness.run", "-m", *ovr]))
    return rc


