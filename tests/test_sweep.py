"""Sweeps: experiment grids expand as documented; the fresh-process launcher resumes by config hash, records
failures and survives being killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.config import effective_alpha, effective_lr, effective_rank, resolved
from tests.conftest import CONF, DATA, REPO, compose


def grid(experiment: str, *extra: str) -> list[list[str]]:
    """The job overrides `python -m harness.run -m +experiment=<experiment> <extra>` launches."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.config import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=[f"+experiment={experiment}", *extra], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    return [[*job, f"+experiment={experiment}", *extra] for job in jobs]


def distinct(jobs) -> list[list[str]]:
    """One job per configuration, seeds aside (a seed changes no recipe or grid setting these tests check)."""
    seen = {}
    for job in jobs:
        seen.setdefault(tuple(o for o in job if not o.startswith("train.seed=")), job)
    return list(seen.values())


def choices(jobs, key):
    return sorted({o.split("=", 1)[1] for job in jobs for o in job if o.startswith(key + "=")})


def test_default_grid_is_at_least_12_runs_over_3_methods_2_ranks_2_target_sets():
    jobs = grid("default")
    assert len(jobs) >= 12
    assert len(choices(jobs, "method")) >= 3 and len(choices(jobs, "lora.r")) >= 2
    assert len(choices(jobs, "lora.targets")) >= 2


def test_a_grid_gets_each_baseline_once_per_configuration_it_fine_tunes():
    from hydra_plugins.harness_sweeper.harness_sweeper import baseline_jobs

    jobs = [["method=lora", "lora.r=2", "task=mrpc", "train.seed=1"], ["method=qlora_nf4", "lora.r=8", "task=mrpc",
             "method.compute_dtype=bf16", "train.seed=1"], ["method=lora", "++lora.targets=qv", "task=mrpc", "train.seed=2"],
            ["method=head_only", "task=mrpc", "train.seed=1"]]
    assert baseline_jobs(jobs, ["majority", "head_only"]) == [
        ["method=majority", "task=mrpc", "train.seed=1"],  # the grid runs head_only at seed 1 itself
        ["method=majority", "task=mrpc", "train.seed=2"], ["method=head_only", "task=mrpc", "train.seed=2"]]
    assert baseline_jobs([["lora.r=2"]], ["zero_shot"]) == [["method=zero_shot"]]
    assert baseline_jobs(jobs, []) == []


def test_the_default_grid_declares_its_baselines_and_a_wrong_one_is_refused_naming_the_valid_ones():
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.config import register
    from hydra_plugins.harness_sweeper.harness_sweeper import HarnessSweeper

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=["+experiment=default"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("HarnessSweeper")
    assert list(cfg.hydra.sweeper.baselines) == ["majority", "zero_shot", "head_only"]
    with pytest.raises(ValueError, match=r"\['head_onyl'\].*valid: \['head_only', 'majority', 'zero_shot'\]"):
        # unbound: Hydra's plugin scan may have re-imported BasicSweeper since this module subclassed it
        HarnessSweeper.split_arguments(SimpleNamespace(baselines=["head_onyl"]), [], None)


def test_lora_table6_grid_and_its_paper_scale():
    jobs = grid("lora_table6")
    assert choices(jobs, "lora.targets") == ["q", "qkvo", "qv"] and choices(jobs, "lora.r") == ["1", "2", "4", "64", "8"]
    assert len(jobs) == 15 * len(choices(jobs, "train.seed"))
    assert choices(jobs, "model") == ["minilm_l6"]
    paper = grid("lora_table6", "scale=paper")
    assert choices(paper, "model") == ["roberta_large"] and choices(paper, "train") == ["paper_roberta"]
    cfg = compose(paper[0])
    assert cfg.scale == "paper" and cfg.task.train_size is None and cfg.model.name == "roberta_large"
    assert cfg.train.lr == 5e-4 and cfg.train.epochs == 30  # the per-task recipe (conf/recipe/paper_roberta/mnli)


def test_lora_table5_derives_r_from_the_budget():
    ranks = {}
    for job in distinct(grid("lora_table5")):
        cfg = compose(job)
        ranks[cfg.lora.targets] = effective_rank(cfg.lora)
    assert ranks == {"q": 8, "k": 8, "v": 8, "o": 8, "qk": 4, "qv": 4, "qkvo": 2}


def test_qlora_table3_covers_every_data_type_on_one_recipe():
    jobs = grid("qlora_table3")
    assert choices(jobs, "method") == sorted(["full", "lora_bf16", "lora", "qlora_int8", "qlora_fp4", "qlora_fp4_dq",
                                              "qlora_nf4", "qlora_nf4_dq"])
    recipes = {json.dumps({k: v for k, v in resolved(compose(j))["train"].items() if k != "seed"}, default=str)
               for j in distinct(jobs)}
    assert len(recipes) == 1


def test_lora_table2_sweeps_tasks_and_methods_with_seeds():
    jobs = grid("lora_table2")
    assert choices(jobs, "task") == ["mrpc"] and choices(jobs, "method") == ["bitfit", "full", "lora"]
    assert len(choices(jobs, "train.seed")) >= 5  # the paper's median over 5 seeds
    assert len(choices(grid("lora_table2", "scale=paper"), "task")) == 8


@pytest.mark.parametrize("experiment", ["default", "lora_table2", "lora_table5", "lora_table6", "qlora_table3",
                                        "qlora_fig2_fig4"])
def test_local_minilm_grids_use_the_measured_recipe_on_tasks_that_clear_their_baselines(experiment):
    """Each local MiniLM grid trains with train=local on a task that reports/sanity/summary.json marks usable for
    claims, keeps alpha/r the same at every rank, and gives full fine-tuning its own learning rate."""
    summary = json.loads((REPO / "reports" / "sanity" / "summary.json").read_text())
    usable = {t["task"] for t in summary["tasks"].values() if t["usable_for_claims"]}
    scales, lrs = set(), {}
    for job in distinct(grid(experiment)):
        cfg = compose(job)
        assert cfg.train.lr_full is not None and cfg.task.name in usable, (experiment, cfg.task.name, usable)
        assert str(cfg.task.pair_encoding.value) == "bi"
        if cfg.method.adapter:
            scales.add(effective_alpha(cfg.lora) / effective_rank(cfg.lora))
        lrs[cfg.method.name] = effective_lr(cfg)
    assert len(scales) == 1, scales
    if "full" in lrs and "lora" in lrs:
        assert lrs["full"] == 3e-5 and lrs["lora"] == 1e-3


def test_unknown_experiment_lists_the_valid_ones():
    p = subprocess.run([sys.executable, "-m", "harness.run", "+experiment=lora_tabel6", "--cfg", "job"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "HARNESS_NO_REEXEC": "1"})
    assert p.returncode != 0 and "lora_tabel6" in p.stderr and "lora_table6" in p.stderr


# ------------------------------------------------------------------------------------------------ launcher
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")


def sweep_cmd(out: Path, tiny_bert: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "harness.run", "-m", "+experiment=default", f"paths.output_root={out}",
            f"model.source={tiny_bert}", "model.name=tiny", "model.shape=null",
            "task.train_size=32", "task.eval_size=32",
            "train.max_seq_len=32", "train.threads=1", "method=lora", "experiment_name=t", *overrides]


NO_BASELINES = "hydra.sweeper.baselines=[]"  # the default grid runs them; tests that count jobs leave them out


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) | {"_file": str(p)} for p in sorted(out.glob("sweeps/t/*/*/record.json"))]


def cmdline(proc) -> list[str]:
    """A process's command line; [] for one that has just exited (a zombie until the launcher reaps it)."""
    import psutil

    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@needs_data
def test_sweep_records_failures_goes_on_and_resumes_by_config_hash(tmp_path, tiny_bert):
    out = tmp_path / "out"
    cmd = sweep_cmd(out, tiny_bert, "lora.r=2", "lora.targets=qv,qz")  # qz is not a target set: that job fails
    p = subprocess.run(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
    recs = records(out)
    # the default grid's baselines ran after it, once for both LoRA jobs (they differ only in lora.*), as runs
    assert [r["config"]["method"]["name"] for r in recs[2:]] == ["majority", "zero_shot", "head_only"]
    assert all(r["status"] == "ok" for r in recs[2:]) and len(recs) == 5
    status = {r["config"]["lora"]["targets"]: r for r in recs[:2]}
    assert status["qv"]["status"] == "ok" and status["qz"]["status"] == "failed"
    assert "qz" in status["qz"]["error"] and "ConfigError" in status["qz"]["error"]
    assert "batch done: 1 failed, 4 ok" in p.stdout
    # the second sweep skips the ok jobs and retries only the failed one
    p2 = subprocess.run(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p2.returncode == 0 and "launching 1 jobs (4 skipped)" in p2.stdout, p2.stdout[-3000:]
    again = [r for r in records(out) if r["config"]["method"]["name"] == "lora"]
    assert [r["status"] for r in again if r["config"]["lora"]["targets"] == "qv"] == ["ok"]
    assert [r["status"] for r in again if r["config"]["lora"]["targets"] == "qz"] == ["failed", "failed"]
    # and the report lists the failure, and shows the LoRA row beside its best baseline from this sweep
    rep = subprocess.run([sys.executable, "-m", "harness.report", "--root", str(out), "--out", str(tmp_path / "rep")],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and "failed: sweeps/t/" in rep.stdout, rep.stderr[-2000:]
    page = (tmp_path / "rep" / "t" / "README.md").read_text()
    assert "## Failed runs" in page
    assert "Head only (frozen backbone)" in page and "Majority class / mean" in page and "Zero-shot" in page
    assert "has a baseline on its task and split" not in page


@pytest.mark.slow
@needs_data
def test_killed_sweep_reruns_only_the_missing_jobs_and_a_killed_job_is_recorded_failed(tmp_path, tiny_bert):
    import psutil

    out = tmp_path / "out"
    cmd = sweep_cmd(out, tiny_bert, "lora.r=1,2,4", "lora.targets=qv", NO_BASELINES)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not records(out) and time.time() < deadline:
        time.sleep(0.2)
    # the second job is now starting: kill its process alone; the launcher records it and goes on
    child = None
    while child is None and time.time() < deadline:
        child = next((c for c in psutil.Process(proc.pid).children() if "lora.r=2" in cmdline(c)), None)
        time.sleep(0.1)
    time.sleep(1.0)
    child.send_signal(signal.SIGKILL)
    # then the whole sweep dies at a random point of the third job (the delay is printed for a rerun)
    while len(records(out)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    delay = random.Random(time.time_ns()).uniform(0.1, 4.0)
    print(f"killing the sweep {delay:.2f} s into its third job")
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    first = records(out)
    assert [r["status"] for r in first] == ["ok", "failed"], [(r["_file"], r["config"]["lora"]["r"]) for r in first]
    assert "SIGKILL" in first[1]["error"] and first[1]["recorded_by"] == "launcher"
    ok_mtime = Path(first[0]["_file"]).stat().st_mtime_ns

    p = subprocess.run(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == 0 and "launching 2 jobs (1 skipped)" in p.stdout, p.stdout[-3000:]
    final = [r for r in records(out) if r["status"] == "ok"]
    assert sorted(r["config"]["lora"]["r"] for r in final) == [1, 2, 4]
    assert len({r["config_hash"] for r in final}) == 3
    assert Path(first[0]["_file"]).stat().st_mtime_ns == ok_mtime  # the finished run was not redone
    # what an uninterrupted sweep records: these 3 config hashes, one ok record each; no partial or temp files
    from harness.config import resolved
    from harness.records import config_hash
    from harness.report.frame import latest_per_config

    import shlex

    jobs = {tuple(shlex.split(f.read_text())[3:-1]) for f in out.rglob("command.txt")}  # python -m harness.run ...
    assert len(jobs) == 3
    expected = {config_hash(resolved(compose([o for o in job if not o.startswith("hydra.")]))) for job in jobs}
    assert {r["config_hash"] for r in final} == expected
    chosen, _ = latest_per_config(records(out))
    assert sorted(r["status"] for r in chosen) == ["ok"] * 3
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".record.json.*"))


@pytest.mark.parametrize("launcher, target", [
    ("harness_local", "hydra_plugins.harness_launcher.harness_launcher.HarnessLauncher"),
    ("slurm_gpu", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
])
def test_launchers_compose(launcher, target):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=["+experiment=lora_table6", f"hydra/launcher={launcher}"],
                       return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target


@pytest.mark.slow
@needs_data
def test_other_launchers_resume_too_each_job_skips_itself(tmp_path, tiny_bert):
    out = tmp_path / "out"
    cmd = sweep_cmd(out, tiny_bert, "lora.r=2", "lora.targets=qv", "hydra/launcher=basic", NO_BASELINES)
    p = subprocess.run(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    assert p.returncode == 0 and len(records(out)) == 1, p.stdout[-3000:]
    p = subprocess.run(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    assert p.returncode == 0 and "skip: an ok record with this config hash exists" in p.stdout, p.stdout[-3000:]
    assert len(records(out)) == 1


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_grid_composes_and_validates_at_both_scales(experiment):
    """Every experiment's grid, at local and (where it has one) paper scale, composes as `make sweep
    EXPERIMENT=... SCALE=...` composes it, and one job of each method passes validation."""
    from harness.config import validate

    paper = (CONF / "at_scale" / experiment / "paper.yaml").is_file()
    for scale in ("local", "paper") if paper else ("local",):
        jobs = grid(experiment, f"scale={scale}")
        assert jobs, (experiment, scale)
        per_method = {next((o for o in job if o.startswith("method=")), ""): job for job in jobs}
        for job in per_method.values():
            cfg = compose(job)
            validate(cfg)
            assert cfg.scale == scale and cfg.experiment_name


def test_lora_table3_e2e_grid():
    jobs = grid("lora_table3_e2e")
    assert choices(jobs, "method") == ["full", "lora", "qlora_nf4_dq", "zero_shot"]
    assert choices(jobs, "train.seed") == ["1", "2", "3"]
    cfg = compose(jobs[0])
    assert cfg.task.name == "e2e" and cfg.lora.r == 4 and effective_alpha(cfg.lora) == 32
    # each method at the rate chosen on MRs carved from the dev file it trains on (conf/recipe/default/e2e.yaml)
    lrs = {c.method.name: effective_lr(c) for c in map(compose, jobs)}
    assert lrs["full"] == 1e-4 and lrs["lora"] == lrs["qlora_nf4_dq"] == 2e-3
    paper = compose(grid("lora_table3_e2e", "scale=paper")[0])
    assert paper.model.name == "gpt2_medium" and paper.task.num_beams == 10 and paper.task.train_split == "train"
    assert paper.task.length_penalty == 0.9 and paper.task.no_repeat_ngram_size == 4 and paper.train.epochs == 5


LOCAL_GRIDS = sorted(e for e in EXPERIMENTS if (CONF / "at_scale" / e / "local.yaml").is_file())


@pytest.mark.parametrize("experiment", LOCAL_GRIDS)
def test_a_local_grid_under_200_optimizer_steps_says_why_in_its_report_note(experiment):
    """Issue 15: every local grid trains at least 200 optimizer steps, or its report says why not (report.note,
    shown on the report's page). Steps are counted as training counts them (harness/train.py)."""
    import math

    from harness.config import trains

    short = {}
    for job in distinct(grid(experiment, "scale=local")):
        cfg = compose(job)
        if not trains(cfg):
            continue
        t = cfg.train
        if t.max_steps > 0:
            steps = int(t.max_steps)
        else:
            assert cfg.task.train_size, (experiment, job, "a grid on a whole train split: count its rows here")
            steps = math.ceil(math.ceil(cfg.task.train_size / (t.batch_size * t.grad_accum)) * t.epochs)
        if steps < 200:
            short[steps] = cfg.report.note or ""
    for steps, note in short.items():
        assert f"{steps} optimizer steps" in note and "not 200" in note, (experiment, steps, note)
