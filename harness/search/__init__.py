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

The package, by concern: `space` (parameters, overrides, validation, sampler and pruner), `storage` (URLs, locks,
worker identity, heartbeats, opening a study), `worker` (the ask/run/tell loop, the trial objective, --confirm) and
`cli` (the command line). The names below are its public surface.
"""

from harness.search.cli import load, main, parse_args
from harness.search.space import (COSTS, DEFAULT_SEARCH, FINISHED, PRUNERS, SAMPLERS, STUDY_RE, directions,
                                  merge_overrides, param_key, param_overrides, rank_param, run_eval_splits,
                                  space_description, suggest, to_optuna_params, validate_search)
from harness.search.storage import (counts, locks, open_storage, open_study, public_url, reap_dead_trials,
                                    storage_url, study_lock, worker_id)
from harness.search.worker import (RunObjective, confirm, confirm_experiment, confirm_jobs, progress_line,
                                   record_value, run_worker)

__all__ = ["COSTS", "DEFAULT_SEARCH", "FINISHED", "PRUNERS", "SAMPLERS", "STUDY_RE", "RunObjective", "confirm",
           "confirm_experiment", "confirm_jobs", "counts", "directions", "load", "locks", "main", "merge_overrides",
           "open_storage", "open_study", "param_key", "param_overrides", "parse_args", "progress_line", "public_url",
           "rank_param", "reap_dead_trials", "record_value", "run_eval_splits", "run_worker", "space_description",
           "storage_url", "study_lock", "suggest", "to_optuna_params", "validate_search", "worker_id"]
