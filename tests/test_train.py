"""The training path in-process on a tiny random BERT: optimizers, eval history, divergence, records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.runner import execute
from tests.conftest import DATA, REPO, compose, tiny_overrides

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")

SMALL = ["task.train_size=48", "task.eval_size=16", "train.batch_size=8", "train.threads=1", "lora.targets=qv"]


@pytest.mark.parametrize("optimizer,cls", [
    ("adamw", "torch.optim.adamw.AdamW"),
    ("adamw_8bit", "bitsandbytes.optim.adamw.AdamW(optim_bits=8, paged=False)"),
    ("paged_adamw", "bitsandbytes.optim.adamw.AdamW(optim_bits=32, paged=True)"),
    ("paged_adamw_8bit", "bitsandbytes.optim.adamw.AdamW(optim_bits=8, paged=True)"),
])
def test_optimizers_run_and_are_recorded(tmp_path, tiny_bert, optimizer, cls):
    cfg = compose(tiny_overrides(tiny_bert, "bert", "cls") + SMALL + [f"train.optimizer={optimizer}", "train.max_steps=3"])
    rec = execute(cfg, tmp_path)
    assert rec["status"] == "ok" and rec["method"]["optimizer"] == cls
    assert rec["steps"] == 3 and len(rec["metrics"]["train_loss"]["log"]) == 3


def test_epochs_grad_accum_and_eval_history(tmp_path, tiny_bert):
    cfg = compose(tiny_overrides(tiny_bert, "bert", "cls") + SMALL + ["train.epochs=2", "train.grad_accum=2",
                                                                     "train.eval_every=2"])
    rec = execute(cfg, tmp_path)
    # 48 examples / (8 x 2) = 3 optimizer steps per epoch, 2 epochs
    assert rec["steps"] == 6 and rec["throughput"]["train_samples"] == 96
    assert [h["step"] for h in rec["metrics"]["history"]] == [2, 4, 6, 6]
    assert json.loads((tmp_path / "record.json").read_text())["config_hash"] == rec["config_hash"]


def test_nan_loss_stops_the_run_as_diverged(tmp_path, tiny_bert):
    from harness.train import DivergedError

    cfg = compose(tiny_overrides(tiny_bert, "bert", "cls") + SMALL + ["train.lr=1e30", "train.max_steps=6",
                                                                     "method=full", "train.max_grad_norm=1e30"])
    with pytest.raises(DivergedError):
        execute(cfg, tmp_path)
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["status"] == "diverged" and "loss became" in rec["error"]


def test_config_hash_ignores_paths_but_not_hyperparameters(tmp_path):
    from harness.config import resolved
    from harness.records import config_hash

    a = config_hash(resolved(compose(["paths.output_root=/x"])))
    assert a == config_hash(resolved(compose(["paths.output_root=/y"])))
    assert a != config_hash(resolved(compose(["lora.r=16"])))
    # a schema key added later (method.bias_only) is left out at its default: older records keep their hash
    cfg = resolved(compose([]))
    old = {**cfg, "method": {k: v for k, v in cfg["method"].items() if k != "bias_only"}}
    assert config_hash(old) == config_hash(cfg)
    assert config_hash(resolved(compose(["method=bitfit"]))) != config_hash(resolved(compose(["method=full"])))


def test_regression_labels_are_standardised_on_the_training_split(minilm_path):
    import pandas as pd
    from transformers import AutoTokenizer

    from harness.train import label_norm, tokenize

    train = pd.DataFrame({"sentence1": ["a", "b", "c", "d"], "sentence2": ["a", "x", "y", "z"],
                          "label": [0.0, 1.0, 4.0, 5.0]})
    mean, std = label_norm(train)
    assert (mean, std) == (2.5, pytest.approx(2.0616, abs=1e-4))
    ds = tokenize(train, AutoTokenizer.from_pretrained(minilm_path), ["sentence1", "sentence2"], 16, True, (mean, std))
    assert ds["labels"] == pytest.approx([(y - 2.5) / std for y in (0.0, 1.0, 4.0, 5.0)])
    assert label_norm(pd.DataFrame({"label": [3.0, 3.0]})) == (3.0, 1.0)  # constant labels: no division by zero


def test_length_grouped_sampler_groups_batches_in_random_order():
    import random

    from harness.train import ShuffledLengthGroupedSampler

    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(1000)]
    s = ShuffledLengthGroupedSampler(lengths, batch_size=10, seed=3, mega=5)
    idx = list(s)
    assert sorted(idx) == list(range(1000))  # every example once per epoch
    batches = [idx[i:i + 10] for i in range(0, 1000, 10)]
    assert batches == s.batches()  # the order the Trainer's batch sampler cuts is the grouped one

    def spread(b):
        return max(lengths[i] for i in b) - min(lengths[i] for i in b)

    rand = list(range(1000))
    rng.shuffle(rand)
    grouped = sum(spread(b) for b in batches) / len(batches)
    random_ = sum(spread(rand[i:i + 10]) for i in range(0, 1000, 10)) / 100
    assert grouped < random_ / 3  # much less padding inside a batch
    # the order of batches is not a long-to-short curriculum: longest lengths are not monotone in the order
    tops = [max(lengths[i] for i in b) for b in batches]
    assert sum(a > b for a, b in zip(tops, tops[1:])) < 0.7 * len(tops)
    assert sum(a < b for a, b in zip(tops, tops[1:])) > 0.3 * len(tops)
    assert list(ShuffledLengthGroupedSampler(lengths, 10, seed=3, mega=5)) == idx  # seeded
    s.set_epoch(1)
    assert list(s) != idx


def test_trainer_uses_the_shuffled_length_sampler(tmp_path, tiny_bert):
    from harness.profile import Throughput
    from harness.runner import build_model, _prepare_classification
    from harness.tasks import find_data_dir, load_task
    from harness.models import load_tokenizer
    from harness.train import ShuffledLengthGroupedSampler, make_trainer

    cfg = compose(tiny_overrides(tiny_bert, "bert", "cls") + SMALL)
    data = load_task(cfg.task, find_data_dir(cfg.paths.data_dir), seed=0)
    tok = load_tokenizer(tiny_bert, cfg.model)
    prep = _prepare_classification(cfg, data, tok)
    model, dtype, _, _ = build_model(cfg, tiny_bert, 2)
    tr = make_trainer(model, tok, prep["train"], prep["evals"], cfg, str(tmp_path), dtype=dtype, meter=Throughput())
    assert isinstance(tr._get_train_sampler(), ShuffledLengthGroupedSampler)
    cfg2 = compose(tiny_overrides(tiny_bert, "bert", "cls") + SMALL + ["train.group_by_length=false"])
    tr2 = make_trainer(model, tok, prep["train"], prep["evals"], cfg2, str(tmp_path), dtype=dtype, meter=Throughput())
    assert not isinstance(tr2._get_train_sampler(), ShuffledLengthGroupedSampler)


def test_length_grouped_sampler_puts_the_longest_batch_first():
    from harness.train import ShuffledLengthGroupedSampler

    lengths = list(range(1, 401))
    for seed in range(5):
        b = ShuffledLengthGroupedSampler(lengths, 8, seed=seed, mega=10).batches()
        assert 399 in b[0]


def test_a_run_starts_with_openmp_wait_defaults_the_user_can_override():
    """harness.run re-executes itself (and the sweep launcher starts each job) with profile.process_env: idle
    OpenMP threads sleep soon (sharing the cores)."""
    from harness.profile import process_env

    assert process_env({}) == {"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": "PASSIVE"}
    mine = process_env({"OMP_WAIT_POLICY": "ACTIVE"})
    assert mine["OMP_WAIT_POLICY"] == "ACTIVE" and mine["GOMP_SPINCOUNT"] == "1000"


def test_the_exact_allocator_returns_freed_memory_to_the_kernel_and_the_fast_one_keeps_it():
    """What the memory meter relies on (glibc, switched at run time by mallopt): in exact mode the resident set
    drops when a big tensor is freed; in fast mode glibc keeps it for reuse. Run in a fresh process, so no other
    test's allocations are in the heap."""
    code = """
import torch
from harness.profile import malloc_mode, rss_mb
out = []
for mode in ("exact", "fast"):
    assert malloc_mode(mode)
    xs = [torch.ones(256 * 1024) for _ in range(48)]  # 48 x 1 MiB (below the fast mode's 64 MiB trim)
    held = rss_mb()
    del xs
    out.append(held - rss_mb())
print(out[0], out[1])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    exact_freed, fast_freed = map(float, r.stdout.split())
    assert exact_freed > 44  # MiB back to the kernel of the 48 freed
    assert fast_freed < 8  # kept by glibc


def test_report_to_writes_tensorboard_events_and_an_mlflow_run_under_the_run_dir(tiny_bert, tmp_path, monkeypatch):
    """train.report_to=[tensorboard,mlflow], offline: the Trainer's curve and the record's summary (final metric,
    peak memory) land in TensorBoard event files and an MLflow store under the run directory; the record says
    where; the setting is not part of the config hash."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.records import config_hash
    from harness.runner import execute

    for k in ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    base = [*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "task.pair_encoding=bi", "task.train_size=32",
            "task.eval_size=16", "train.batch_size=8", "train.threads=1", "method=lora", "train.max_steps=3",
            f"paths.output_root={tmp_path}", "experiment_name=tracked"]
    rec = execute(compose([*base, "train.report_to=[tensorboard,mlflow]"]), tmp_path / "run")
    assert rec["status"] == "ok" and set(rec["tracking"]) == {"tensorboard", "mlflow"}
    assert rec["config_hash"] == config_hash({**rec["config"], "train": {**rec["config"]["train"], "report_to": []}})
    acc = 100 * rec["metrics"]["final"]["validation"]["accuracy"]

    ev = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    tags = ev.Tags()["scalars"]
    assert "train/loss" in tags  # the Trainer's curve
    final = ev.Scalars("summary/final/validation/accuracy")
    assert final[-1].step == 3 and 100 * final[-1].value == pytest.approx(acc)
    assert ev.Scalars("summary/memory/peak_mb")[-1].value == pytest.approx(rec["memory"]["peak_mb"], rel=1e-6)

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert 100 * run.data.metrics["final.validation.accuracy"] == pytest.approx(acc)
    assert "loss" in run.data.metrics and run.data.tags["harness.config_hash"] == rec["config_hash"]
    assert not (tmp_path / "mlruns").exists() and not (REPO / "mlruns").exists()
    import os

    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # the next run in this process (a search) writes its own
    import importlib.util

    from harness.config import ConfigError

    if importlib.util.find_spec("wandb") is None:  # a tracker that is not installed fails before any model loads
        with pytest.raises(ConfigError, match="train.report_to=wandb: the 'wandb' package is not installed"):
            execute(compose([*base, "train.report_to=[wandb]"]), tmp_path / "run_wandb")
    with pytest.raises(Exception) as e:
        compose([*base, "train.report_to=[tensorbored]"])
    assert "expected one of [tensorboard, mlflow, wandb]" in str(e.value.__cause__)


KILL_AFTER_SAVE = """
import os, signal, sys
from harness import train
make = train._checkpoint_callback

def killing(every_steps, every_min):  # SIGKILL this process right after the checkpoint at step {step} is complete
    cb = make(every_steps, every_min)
    saved = cb.on_save

    def on_save(args, state, control, **kw):
        saved(args, state, control, **kw)
        if state.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)
    cb.on_save = on_save
    return cb

train._checkpoint_callback = killing
import runpy
runpy.run_module("harness.run", run_name="__main__", alter_sys=True)  # as python -m harness.run
"""


@pytest.mark.parametrize("method,stop", [("lora", "sigkill"), ("full", "interrupt")])
def test_a_run_killed_mid_training_resumes_from_its_last_checkpoint_and_ends_as_if_never_killed(
        tiny_bert, tmp_path, monkeypatch, method, stop):
    """Stopped right after the step-25 checkpoint (epoch 5 of 9, first batch of 6; the loss is read every 2 steps,
    so the checkpoint falls between two readings) by SIGKILL (a process that cleans nothing up) or an interrupt
    (in this process: full fine-tuning's weights instead of an adapter), a half-written checkpoint at step 30 beside
    it; the rerun of the same config resumes at step 25 (weights or adapter, optimizer, scheduler, RNG states, data
    position) and ends with the uninterrupted run's loss curve, mean loss, evaluations and final metric, exactly
    (CPU, one thread). The record says where it resumed; the checkpoints go once it is recorded ok."""
    import os
    import shutil

    from harness import train

    args = [*tiny_overrides(tiny_bert, "bert", "cls"), "train=default", "task=rte", "task.train_size=48",
            "task.eval_size=16", "train.batch_size=8", "train.epochs=9", "train.eval_every=10", "train.threads=1",
            "train.max_seq_len=64", f"method={method}", "train.save_every=5", "experiment_name=resume",
            "train.save_adapter=false"]
    ref_rec = execute(compose([*args, f"paths.output_root={tmp_path / 'a'}"]), tmp_path / "a" / "ref")  # uninterrupted
    assert "resumed" not in ref_rec and not (tmp_path / "a" / "checkpoints").exists()

    b = [*args, f"paths.output_root={tmp_path / 'b'}"]
    if stop == "sigkill":
        cmd = [sys.executable, "-c", KILL_AFTER_SAVE.replace("{step}", "25"), *b,
               f"hydra.run.dir={tmp_path / 'b' / 'killed'}"]
        killed = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HARNESS_NO_REEXEC": "1"}, capture_output=True,
                                text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr[-3000:]
    else:
        make = train._checkpoint_callback

        def interrupting(every_steps, every_min):
            cb = make(every_steps, every_min)
            saved = cb.on_save

            def on_save(args, state, control, **kw):
                saved(args, state, control, **kw)
                if state.global_step == 25:
                    raise KeyboardInterrupt
            cb.on_save = on_save
            return cb

        monkeypatch.setattr(train, "_checkpoint_callback", interrupting)
        with pytest.raises(KeyboardInterrupt):
            execute(compose(b), tmp_path / "b" / "killed")
        monkeypatch.setattr(train, "_checkpoint_callback", make)
    assert not (tmp_path / "b" / "killed" / "record.json").exists()
    (ckpt_root,) = (tmp_path / "b" / "checkpoints" / "resume").iterdir()
    assert sorted(p.name for p in ckpt_root.iterdir()) == ["checkpoint-20", "checkpoint-25"]  # the newest two
    half = ckpt_root / "checkpoint-30"  # killed while writing: no completion marker
    shutil.copytree(ckpt_root / "checkpoint-25", half)
    (half / "harness_checkpoint.json").unlink()
    (half / "optimizer.pt").write_bytes(b"truncated")

    rec = execute(compose(b), tmp_path / "b" / "again")  # the rerun
    assert rec["resumed"] == {"from_step": 25, "checkpoint": str(ckpt_root / "checkpoint-25")}
    assert rec["config_hash"] == ref_rec["config_hash"] and rec["steps"] == ref_rec["steps"] == 54
    assert rec["metrics"]["train_loss"]["log"] == ref_rec["metrics"]["train_loss"]["log"]
    assert rec["metrics"]["train_loss"]["mean"] == pytest.approx(ref_rec["metrics"]["train_loss"]["mean"], rel=1e-6)
    assert rec["metrics"]["history"] == ref_rec["metrics"]["history"]
    assert rec["metrics"]["final"] == ref_rec["metrics"]["final"]
    assert not ckpt_root.exists()  # recorded ok: nothing left to resume
