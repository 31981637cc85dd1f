"""Faults and hostile input on one run (in-process, tiny random BERT): each fault is recorded with its error and
traceback, or refused before any work, and never harms the records already written."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.config import ConfigError
from harness.runner import execute
from tests.conftest import DATA, REPO, compose, tiny_overrides

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")

SMALL = ["task.train_size=32", "task.eval_size=16", "train.batch_size=8", "train.threads=1", "lora.targets=qv",
         "train.max_steps=3"]


def cfg_for(tiny_bert, *extra):
    return compose(tiny_overrides(tiny_bert, "bert", "cls") + SMALL + list(extra))


def read(path: Path) -> dict:
    return json.loads((path / "record.json").read_text())


@pytest.fixture
def earlier(tmp_path, tiny_bert) -> tuple[Path, bytes]:
    """A finished run's record beside the one a test breaks: it must stay byte for byte."""
    d = tmp_path / "earlier"
    assert execute(cfg_for(tiny_bert), d)["status"] == "ok"
    return d, (d / "record.json").read_bytes()


def test_exception_in_the_data_collator_is_recorded_failed_with_traceback(tmp_path, tiny_bert, monkeypatch, earlier):
    import transformers

    class Broken(transformers.DataCollatorWithPadding):
        def __call__(self, features):
            raise ValueError("collator exploded on purpose")

    monkeypatch.setattr(transformers, "DataCollatorWithPadding", Broken)
    with pytest.raises(ValueError, match="exploded"):
        execute(cfg_for(tiny_bert), tmp_path / "run")
    rec = read(tmp_path / "run")
    assert rec["status"] == "failed" and rec["error"] == "ValueError: collator exploded on purpose"
    assert "in __call__" in rec["traceback"] and "collator exploded" in rec["traceback"]
    assert (earlier[0] / "record.json").read_bytes() == earlier[1]


def test_out_of_memory_is_recorded_failed_with_a_hint(tmp_path, tiny_bert, monkeypatch):
    from harness import train

    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    trainer_cls, _ = train._trainer_class()
    monkeypatch.setattr(train, "_trainer_class", lambda: (type("OOMTrainer", (trainer_cls,), {"training_step": oom}), _))
    with pytest.raises(torch.OutOfMemoryError):
        execute(cfg_for(tiny_bert), tmp_path)
    rec = read(tmp_path)
    assert rec["status"] == "failed" and rec["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "train.batch_size" in rec["hint"] and "gradient_checkpointing" in rec["hint"]


def test_nan_loss_stops_as_diverged_or_trains_on_when_configured(tmp_path, tiny_bert):
    from harness.train import DivergedError

    blow_up = ["train.lr=1e30", "train.max_steps=6", "method=full", "train.max_grad_norm=1e30"]
    with pytest.raises(DivergedError):
        execute(cfg_for(tiny_bert, *blow_up), tmp_path / "stop")
    rec = read(tmp_path / "stop")
    assert rec["status"] == "diverged" and "loss became" in rec["error"] and "traceback" in rec
    rec = execute(cfg_for(tiny_bert, *blow_up, "train.stop_on_nonfinite_loss=false"), tmp_path / "go_on")
    assert rec["status"] == "ok" and rec["steps"] == 6
    assert rec["metrics"]["train_loss"]["nonfinite"] > 0


def test_unwritable_output_fails_before_any_work(tmp_path, tiny_bert, monkeypatch):
    from harness import models
    from harness.records import OutputError

    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: pytest.fail("a model was loaded"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match=r"cannot write results to .*a_file/run.*"):
        execute(cfg_for(tiny_bert), blocker / "run")


def test_disk_full_at_the_record_is_a_clear_error_and_leaves_other_records(tmp_path, tiny_bert, monkeypatch,
                                                                           earlier):
    from harness import records

    real_fsync = records.os.fsync

    def full(fd):
        if Path(f"/proc/self/fd/{fd}").resolve().name.startswith(".record.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(records.os, "fsync", full)
    with pytest.raises(records.OutputError, match="could not be written .*No space left on device; records written "
                                                  "before are untouched"):
        execute(cfg_for(tiny_bert), tmp_path / "run")
    assert not list((tmp_path / "run").glob("*record*"))  # no partial record, no temp file left
    assert (earlier[0] / "record.json").read_bytes() == earlier[1]


@pytest.mark.parametrize("override,bad", [
    ("experiment_name=../../escaped", "experiment_name '../../escaped'"),
    ("experiment_name=/tmp/abs", "experiment_name '/tmp/abs'"),
    ("model.name=a/../../b", "model.name 'a/../../b'"),
    ("task.name=..", "task.name '..'"),
])
def test_names_cannot_put_outputs_outside_the_output_root(tmp_path, override, bad):
    from harness.config import validate

    with pytest.raises(ConfigError, match=f"{bad} cannot be part of an output path"):
        validate(compose([override]))


def test_cli_refuses_an_escaping_name_before_creating_any_directory(tmp_path):
    root = tmp_path / "root"
    p = subprocess.run([sys.executable, "-m", "harness.run", f"paths.output_root={root}",
                        "experiment_name=../../outside"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "cannot be part of an output path" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "outside").exists() and not root.exists()


def test_override_values_never_reach_a_shell(tmp_path, tiny_bert):
    """A sweep whose override carries shell syntax: the launcher passes it as one argv element (the job fails on
    the data directory it names); nothing runs it."""
    marker = tmp_path / "PWNED"
    out = tmp_path / "out"
    value = f"$(touch {marker})`touch {marker}`;touch {marker}"
    p = subprocess.run([sys.executable, "-m", "harness.run", "-m", f"paths.output_root={out}",
                        f"model.source={tiny_bert}", "model.name=tiny", "model.shape=null", "experiment_name=t",
                        f"paths.data_dir='{value}'"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rec = json.loads(next(out.rglob("record.json")).read_text())
    assert rec["status"] == "failed" and value in rec["error"]
    assert not marker.exists()


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path, minilm_path):
    """Only safetensors load by default; model.use_safetensors=false allows a .bin checkpoint one trusts."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from harness.models import ModelError, load_classifier

    d = tmp_path / "bin_model"
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    d.mkdir()
    bert.config.save_pretrained(d)
    torch.save(bert.state_dict(), d / "pytorch_model.bin")  # a pickle checkpoint
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(d)
    assert (d / "pytorch_model.bin").exists() and not list(d.glob("*.safetensors"))
    cfg = compose(tiny_overrides(str(d), "bert", "cls"))
    with pytest.raises(ModelError, match=r"no \.safetensors weights \(found: \['pytorch_model\.bin'\]\).*"
                                         r"model\.use_safetensors=false"):
        load_classifier(str(d), cfg.model, 2)
    cfg = compose(tiny_overrides(str(d), "bert", "cls") + ["model.use_safetensors=false"])
    assert load_classifier(str(d), cfg.model, 2).head.out_features == 2


def test_remote_code_is_not_run_unless_a_config_says_so(tmp_path, tiny_bert):
    """A model folder whose config points at its own Python code: loading refuses and the code never runs."""
    import shutil

    from harness.models import ModelError, load_classifier

    d = tmp_path / "remote"
    shutil.copytree(tiny_bert, d)
    marker = tmp_path / "RAN"
    (d / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                 "from transformers import BertConfig\nclass MyConfig(BertConfig):\n"
                                 "    model_type = 'bert'\n")
    conf = json.loads((d / "config.json").read_text())
    conf["auto_map"] = {"AutoConfig": "custom.MyConfig"}
    conf["model_type"] = "my_custom_bert"  # no built-in class to fall back on: only the folder's code could load it
    (d / "config.json").write_text(json.dumps(conf))
    cfg = compose(tiny_overrides(str(d), "bert", "cls"))
    assert cfg.model.trust_remote_code is False
    with pytest.raises((ModelError, ValueError), match="trust_remote_code"):
        load_classifier(str(d), cfg.model, 2)
    assert not marker.exists()
