"""Optuna search: space parsing and validation, pruning, resume after a kill, two workers on one SQLite study, and
trials that are ordinary runs with tagged records (real SQLite files throughout)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from harness.config import ConfigError
from harness.search import (counts, load, merge_overrides, public_url, run_worker, storage_url, to_optuna_params,
                            validate_search)
from tests.conftest import DATA, REPO, tiny_overrides
from tests.search_fakes import objective_for, spec

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")


def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.sqlite'}"


def study_of(u: str, name: str = "fake"):
    return optuna.load_study(study_name=name, storage=u)


def quiet(_line: str) -> None:
    pass


# ------------------------------------------------------------------------------------------------ the space
def check(*overrides: str, patch: dict | None = None):
    """Load the default space with command-line overrides (and a patch, as a YAML file would write it)."""
    from omegaconf import OmegaConf

    s, base, cfg, run_ovr = load(["search=stsb_minilm", *overrides])
    if patch:
        node = OmegaConf.structured(s)
        OmegaConf.set_struct(node, False)  # a YAML file may add parameters; the command line may not
        s = OmegaConf.to_object(OmegaConf.merge(node, patch))
    validate_search(s, cfg, base, run_ovr)
    return s, base, cfg


def test_default_space_parses_and_trials_compose_from_base_and_command_line():
    s, base, cfg = check("task.train_size=500")
    assert s.study == "stsb_minilm" and s.n_trials >= 12 and s.pruner.name == "median"
    assert set(s.params) == {"r", "alpha", "lr", "targets"}
    assert cfg.task.name == "stsb" and cfg.task.train_size == 500  # the command line wins over search.base
    assert int(cfg.train.eval_every) > 0  # the pruner has evaluations to look at
    # the harness default is enqueued in the study's own terms: alpha 16 at r 8 is alpha/r = 2
    assert to_optuna_params(s, dict(s.enqueue[0])) == {"r": 8, "alpha/r": 2, "lr": 3e-3, "targets": "qv"}
    assert merge_overrides(["a=1", "b=2"], ["+a=3"]) == ["b=2", "+a=3"]


@pytest.mark.parametrize("overrides,message", [
    (["search.params.lr.low=0.01"], "empty range"),
    (["search.params.lr.low=0"], "log: true needs low > 0"),
    (["search.n_trials=0"], "search.n_trials=0 is out of range"),
    (["search.pruner.name=medain"], "valid: ['median', 'hyperband', 'none']"),
    (["search.sampler.name=cmaes"], "valid: ['tpe', 'random']"),
    (["search.objective.metric=accuracy"], "valid: ['pearson', 'spearman', 'loss'"),
    (["search.objective.split=test"], "valid: ['carved']"),  # trials evaluate on the carved split only
    (["search.objective.metric=peak_memory_mb"], "is a cost"),
    (["search.study=../../etc"], "search.study='../../etc' is not valid"),
    ({"params": {"rank": {"key": "lora.rank", "choices": [1, 2]}}}, "'lora.rank' is not a value of the run config"),
    ({"params": {"rank": {"key": "lora.r", "choices": [1, 2]}}}, "set the same run config value"),
    ({"params": {"dropout": {"key": "lora.dropout", "choices": []}}}, "needs a non-empty `choices`"),
    ({"params": {"dropout": {"key": "lora.dropout", "type": "float", "low": 0.0}}}, "needs both low and high"),
    ({"params": {"dropout": {"key": "lora.dropout", "type": "float", "low": 0, "high": 0.5, "log": True}}},
     "log: true needs low > 0"),
    ({"params": {"alpha": {"key": "lora.dropout"}}}, "multiple_of_r is for lora.alpha only"),
    ({"params": {"steps": {"key": "train.max_steps", "type": "int", "low": 1.5, "high": 4}}}, "integer low/high"),
    (["search.params.targets.choices=[qv, qx]"], "the value 'qx' makes an invalid run"),
    (["search.params.r.choices=[0, 8]"], "the value 0 makes an invalid run: lora.r=0 is out of range"),
    (["search.enqueue=[{r: 3}]"], "enqueue[0]: r=3 is outside the space"),
    (["train.eval_every=0"], "needs evaluations during training"),
    (["lora.r=4"], "searches lora.r, so it cannot also be set"),
])
def test_bad_spaces_fail_before_any_model_loads_with_a_clear_message(overrides, message):
    with pytest.raises(ConfigError) as e:
        if isinstance(overrides, dict):
            check(patch=overrides)
        else:
            check(*overrides)
    assert message in str(e.value)


def test_a_space_can_search_the_peft_options_and_bad_values_fail_early():
    """lora.init, lora.use_rslora and lora.use_dora are ordinary run-config values: a search space takes them."""
    extra = {"init": {"key": "lora.init", "choices": ["default", "gaussian", "pissa"]},
             "rslora": {"key": "lora.use_rslora", "choices": [False, True]},
             "dora": {"key": "lora.use_dora", "choices": [False, True]}}
    s, _, _ = check(patch={"params": extra})
    assert {"init", "rslora", "dora"} <= set(s.params)
    with pytest.raises(ConfigError, match="the value 'svd' makes an invalid run"):
        check(patch={"params": {"init": {"key": "lora.init", "choices": ["default", "svd"]}}})


def test_unknown_search_and_typoed_keys_list_the_valid_ones():
    p = subprocess.run([sys.executable, "-m", "harness.search", "search=stsb_minlm"], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "HARNESS_NO_REEXEC": "1"})
    assert p.returncode != 0 and "stsb_minilm" in p.stderr and "Available options" in p.stderr
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="n_trial"):
        load(["search=stsb_minilm", "search.n_trial=3"])


def test_storage_urls():
    s = spec()
    assert storage_url(s, "/x/out") == "sqlite:////x/out/optuna.sqlite"
    s.storage = "runs/s.db"
    assert storage_url(s, "/x").startswith("sqlite:///") and storage_url(s, "/x").endswith("runs/s.db")
    s.storage = "postgresql://me:secret@db/optuna"
    assert storage_url(s, "/x") == s.storage and public_url(s.storage) == "postgresql://me:***@db/optuna"


# ------------------------------------------------------------------------------------------------ Optuna paths
def test_pruning_on_a_fake_objective_records_pruned_not_failed(tmp_path):
    # two high ranks first, then rank 1, whose curve is below their median at every step: pruned whatever the
    # sampler draws after them
    s = spec(n_trials=10, enqueue=[{"r": 64, "alpha": 64, "lr": 1e-3}, {"r": 32, "alpha": 32, "lr": 1e-3},
                                   {"r": 1, "alpha": 1, "lr": 1e-3}])
    u = url(tmp_path)
    c = run_worker(s, u, objective_for(s, "fast"), echo=quiet)
    assert c["COMPLETE"] + c["PRUNED"] == 10 and c["FAIL"] == 0
    assert c["PRUNED"] >= 1
    st = study_of(u)
    for t in st.get_trials(states=(TrialState.PRUNED,)):
        # pruned trials stopped before the last step, below the median of the earlier trials there
        assert max(t.intermediate_values) < 4
    assert st.best_trial.params["r"] >= 16


def test_rerun_resumes_the_study_and_keeps_the_trial_count(tmp_path):
    u = url(tmp_path)
    s = spec(n_trials=3)
    run_worker(s, u, objective_for(s, "fast"), echo=quiet)
    first = [(t.number, t.params) for t in study_of(u).trials]
    run_worker(s, u, objective_for(s, "fast"), echo=quiet)  # already finished: nothing to do
    assert len(study_of(u).trials) == 3
    s.n_trials = 5
    run_worker(s, u, objective_for(s, "fast"), echo=quiet)
    trials = study_of(u).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [(t.number, t.params) for t in trials[:3]] == first
    # a different space on the same study name is refused rather than mixed in
    other = spec(n_trials=6, params={"r": {"key": "lora.r", "type": "categorical", "choices": [1, 2]}})
    with pytest.raises(ConfigError, match="different search space"):
        run_worker(other, u, objective_for(other, "fast"), echo=quiet)


def test_the_same_seed_gives_the_same_trials(tmp_path):
    params = []
    for i in range(2):
        u = f"sqlite:///{tmp_path / f's{i}.sqlite'}"
        s = spec(n_trials=6)
        run_worker(s, u, objective_for(s, "fast"), echo=quiet)
        params.append([t.params for t in study_of(u).trials])
    assert params[0] == params[1]


def test_a_resumed_study_draws_new_parameters_not_its_first_trials_again(tmp_path):
    u = url(tmp_path)
    first = spec(n_trials=3)
    run_worker(first, u, objective_for(first, "fast"), echo=quiet)
    s = spec(n_trials=6)  # a second process resumes it: same seed, three more trials
    run_worker(s, u, objective_for(s, "fast"), echo=quiet)
    drawn = [tuple(sorted(t.params.items())) for t in study_of(u).trials]
    assert len(drawn) == 6 and len(set(drawn)) == 6, drawn


def _worker(u: str, n: int, mode: str, study: str = "fake") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.search_fakes", u, study, str(n), mode], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_worker_is_resumed_its_trial_failed_and_retried_with_the_same_parameters(tmp_path):
    u = url(tmp_path)
    p = _worker(u, 4, "hang")  # trial 1 hangs
    deadline = time.time() + 300  # a bound for a broken worker only: on a loaded machine its imports alone took 100 s
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = study_of(u).trials
        except Exception:  # the study is not created yet
            continue
        # trial 1 is in its objective (its parameters drawn, the "values" attribute set just before the sleep):
        # killed earlier, it would have no parameters for the retry to repeat
        if any(t.number == 1 and t.state == TrialState.RUNNING and "values" in t.user_attrs for t in trials):
            break
    else:
        p.kill()
        pytest.fail("trial 1 never started: " + p.communicate()[0][-2000:])
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = spec(n_trials=4)
    run_worker(s, u, objective_for(s, "fast"), echo=quiet)  # the rerun, in this process
    trials = study_of(u).trials
    c = counts(study_of(u))
    assert c["COMPLETE"] + c["PRUNED"] == 4 and c["FAIL"] == 1 and c["RUNNING"] == 0
    killed = trials[1]
    assert killed.state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state != TrialState.FAIL
    assert len({t.number for t in trials}) == len(trials) == 5


def test_two_workers_on_one_sqlite_study_finish_exactly_the_requested_trials(tmp_path):
    u = url(tmp_path)
    ps = [_worker(u, 12, "slow") for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in ps]
    assert all(p.returncode == 0 for p in ps), outs
    st = study_of(u)
    c = counts(st)
    assert c["COMPLETE"] + c["PRUNED"] == 12 and c["FAIL"] == 0 and c["RUNNING"] == 0 and len(st.trials) == 12
    workers = {t.user_attrs["worker"] for t in st.trials}
    assert len(workers) == 2  # both took trials
    assert not any("Error" in o or "Traceback" in o for o in outs), outs


def test_two_objectives_give_a_pareto_front_and_no_pruning(tmp_path):
    s = spec(n_trials=6, second_objective={"metric": "peak_memory_mb", "direction": "minimize"})
    u = url(tmp_path)

    def obj(trial):
        from harness.search import suggest

        v = suggest(trial, s)
        return v["lora.r"] / 64, float(v["lora.r"])  # better with r, and dearer

    run_worker(s, u, obj, echo=quiet)
    st = study_of(u)
    assert [d.name for d in st.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = st.best_trials
    assert front and all(t.state == TrialState.COMPLETE for t in st.trials)
    # value and cost both grow with r: every r tried is on the front, and nothing else is
    assert {t.params["r"] for t in front} == {t.params["r"] for t in st.trials}


def test_consecutive_failures_stop_the_worker_with_the_error(tmp_path):
    s = spec(n_trials=5)

    def boom(trial):
        raise ValueError("collator exploded")

    with pytest.raises(RuntimeError, match="3 trials in a row failed.*collator exploded"):
        run_worker(s, url(tmp_path), boom, echo=quiet)


# ------------------------------------------------------------------------------------------------ real runs
class PruneAtFirstReport:
    """A stand-in for an Optuna trial that asks to prune at the first evaluation (deterministic)."""

    number = 7

    def __init__(self):
        self.reports, self.attrs = [], {}

    def suggest_categorical(self, name, choices):
        return {"r": 2, "alpha/r": 2, "targets": "qv"}.get(name, choices[0])

    def suggest_float(self, name, low, high, step=None, log=False):
        return 1e-3

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return True

    def set_user_attr(self, k, v):
        self.attrs[k] = v


@needs_data
def test_a_pruned_trial_is_an_ordinary_run_recorded_as_pruned(tmp_path, tiny_bert):
    from harness.search import RunObjective

    out = tmp_path / "out"
    ovr = ["search=stsb_minilm", *tiny_overrides(tiny_bert, "bert", "mean"), "task.train_size=32",
           "task.carve_size=16", "train.batch_size=8", "train.eval_every=2", "train.threads=1",
           f"paths.output_root={out}"]
    s, base, cfg, _ = load(ovr)
    trial = PruneAtFirstReport()
    with pytest.raises(optuna.TrialPruned):
        RunObjective(s, base, str(out), url(tmp_path))(trial)
    rec = json.loads((out / "search" / "stsb_minilm" / "trial_0007" / "record.json").read_text())
    assert rec["status"] == "pruned" and rec["pruned"]["step"] == 2 and trial.reports[0][0] == 2
    assert rec["experiment"] == "search/stsb_minilm"
    assert rec["tags"]["study"] == "stsb_minilm" and rec["tags"]["trial"] == 7
    assert rec["config"]["lora"]["r"] == 2 and rec["config"]["lora"]["alpha"] == 4.0
    assert (out / "search" / "stsb_minilm" / "trial_0007" / "output.log").stat().st_size > 0


@pytest.mark.slow
@needs_data
def test_make_search_end_to_end_with_report_and_resume(tmp_path, tiny_bert):
    out, rep = tmp_path / "out", tmp_path / "reports"
    cmd = [sys.executable, "-m", "harness.search", "search=stsb_minilm", "search.study=tiny", "search.n_trials=3",
           "search.sampler.n_startup_trials=2", *tiny_overrides(tiny_bert, "bert", "mean"), "task.train_size=32",
           "task.carve_size=16", "task.eval_size=16", "train.batch_size=8", "train.eval_every=2",
           f"paths.output_root={out}", "--out", str(rep)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("[tiny] trial ") == 3 and "done: " in p.stdout
    readme = (rep / "search" / "tiny" / "README.md").read_text()
    assert "## Best trials" in readme and "## Every trial" in readme and "harness default" in readme
    assert "python -m harness.run " in readme and (rep / "search" / "tiny" / "history.png").exists()
    every = readme.split("## Every trial", 1)[1]
    assert "nan" not in every  # a trial without an error has an empty note, not pandas' NaN
    summary = json.loads((rep / "search" / "tiny" / "summary.json").read_text())  # the page's numbers as data
    assert [t["trial"] for t in summary["trials"]] == [0, 1, 2] and summary["trials"][0]["harness_default"]
    done = [t["value"] for t in summary["trials"] if t["state"] == "complete"]
    assert summary["best"]["value"] == max(done) and f"| {summary['best']['trial']} " in readme
    assert summary["objectives"][0]["direction"] == "maximize" and summary["confirm"] is None  # not yet confirmed
    assert len(summary["space"]) == len(summary["trials"][0]["params"]) > 0  # alpha is sampled as alpha/r
    # rerun with one more trial: the study resumes (trial numbers go on), and the store holds one record per trial
    p2 = subprocess.run(cmd + ["search.n_trials=4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    assert "[tiny] trial 3 " in p2.stdout and p2.stdout.count("[tiny] trial ") == 1
    from harness.store import Store

    recs = Store(out).records("search/tiny")
    assert sorted(r["tags"]["trial"] for r in recs) == [0, 1, 2, 3]
    # trials chose on the carved split; --confirm reruns the best and the default on dev, 2 seeds each
    assert {r["metrics"]["headline"]["split"] for r in recs if r["status"] == "ok"} == {"carved"}
    p3 = subprocess.run(cmd + ["search.n_trials=4", "search.confirm_seeds=[1,2]", "search.confirm_baselines=[majority,zero_shot]",
                               "--confirm", "--workers", "2"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p3.returncode == 0, p3.stdout[-3000:] + p3.stderr[-3000:]
    conf = Store(out).records("confirm/tiny")
    assert {r["metrics"]["headline"]["split"] for r in conf} == {"validation"} and {r["seed"] for r in conf} == {1, 2}
    by_method = {}
    for r in conf:
        by_method.setdefault(r["config"]["method"]["name"], []).append(r)
    assert len(by_method.pop("lora")) in (2, 4)  # the best trial and the default (one config if they are the same)
    # beside them the baselines asked for, at the same seeds, once: zero-shot left out (a cross-encoder has no
    # untrained score; head only is left out here to keep the test short)
    assert {m: len(rs) for m, rs in by_method.items()} == {"majority": 2}
    readme = (rep / "search" / "tiny" / "README.md").read_text()
    assert "## Confirmed on the dev split, several seeds" in readme
    confirmed = json.loads((rep / "search" / "tiny" / "summary.json").read_text())["confirm"]
    assert confirmed["experiment"] == "confirm/tiny" and confirmed["rows"]  # the dev-split rerun as data too
    for row in confirmed["rows"]:
        assert row["n"] == len(row["seeds"]) and set(row["seeds"]) <= {"1", "2"}  # JSON keys
        assert row["mean"] == pytest.approx(sum(row["seeds"].values()) / row["n"])
        assert row["n"] < 2 or row["ci_lo"] <= row["mean"] <= row["ci_hi"]
    assert all(r["status"] in ("ok", "pruned") for r in recs)
    # make report renders the study's report from the records' storage tag too
    p3 = subprocess.run([sys.executable, "-m", "harness.report", "--root", str(out), "--out", str(rep)], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
    assert p3.returncode == 0 and "search/tiny/README.md" in p3.stdout, p3.stdout + p3.stderr
    assert "Searches" in (rep / "README.md").read_text()


def test_a_storage_whose_tables_another_process_is_creating_opens_on_retry(tmp_path, monkeypatch):
    """Two processes opening a fresh storage at once: the second's CREATE TABLE meets the first's table. Seen in
    the killed-worker test (its poller and the worker), and possible with two workers of different studies."""
    import sqlalchemy

    from harness.search import open_storage

    real = optuna.storages.RDBStorage
    calls = []

    def racing(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            real(*a, **kw)  # the other process got there first
            raise sqlalchemy.exc.OperationalError("CREATE TABLE trial_user_attributes", {},
                                                  Exception("table trial_user_attributes already exists"))
        return real(*a, **kw)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = open_storage(url(tmp_path), 1, 1)
    assert len(calls) == 2 and storage.get_all_studies() == []
