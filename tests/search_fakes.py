"""Fake objectives for search tests: the Optuna machinery (pruning, resume, workers, kills) without training.

Run as a worker process:  python -m tests.search_fakes <storage url> <study> <n_trials> <mode>
"""

from __future__ import annotations

import sys
import time

from omegaconf import OmegaConf

from harness.config import SearchConfig


def spec(study: str = "fake", n_trials: int = 6, **kw):
    base = {
        "study": study, "n_trials": n_trials,
        "params": {"r": {"key": "lora.r", "type": "categorical", "choices": [1, 2, 4, 8, 16, 32, 64]},
                   "alpha": {"key": "lora.alpha", "type": "multiple_of_r", "choices": [1, 2]},
                   "lr": {"key": "train.lr", "type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "objective": {"metric": "pearson", "direction": "maximize"},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "heartbeat_s": 1,
    }
    base.update(kw)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SearchConfig), base))


def objective_for(s, mode: str):
    """r sets the height of the learning curve at every step (low ranks are worse), so the median pruner stops
    low-rank trials; each step is reported like a run's evaluations. mode: fast | slow | hang (trial 1 sleeps,
    to be killed)."""
    import optuna

    from harness.search import suggest

    def fn(trial):
        values = suggest(trial, s)
        trial.set_user_attr("values", values)
        if mode == "hang" and trial.number == 1:
            time.sleep(600)  # killed here
        r = values["lora.r"]
        for step in range(1, 5):
            trial.report((r / 64) * step / 4, step)
            time.sleep(0.05 if mode == "slow" else 0.0)
            if trial.should_prune():
                raise optuna.TrialPruned(f"at step {step}")
        return r / 64 + values["train.lr"]

    return fn


def main(argv: list[str]) -> int:
    from harness.search import run_worker

    url, study, n, mode = argv[0], argv[1], int(argv[2]), argv[3]
    s = spec(study, n)
    run_worker(s, url, objective_for(s, mode), echo=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
