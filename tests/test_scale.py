"""Scale-out on existing engines: a sweep through hydra-submitit-launcher's local executor, one run trained by two
processes under `accelerate launch` (gloo, CPU) against a single process, and two Optuna search workers sharing a
study in PostgreSQL (.ci/run starts a server and sets HARNESS_TEST_POSTGRES_URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import DATA, REPO

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")
PG_URL = os.environ.get("HARNESS_TEST_POSTGRES_URL")


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
@needs_data
def test_submitit_local_launcher_runs_a_sweep_and_resumes(tmp_path, tiny_bert):
    """hydra/launcher=submitit_local: the same code path a SLURM sweep takes (hydra/launcher=slurm_gpu), with
    submitit's local executor instead of sbatch; every job writes its record, a rerun skips done jobs."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
           f"paths.output_root={out}", f"model.source={tiny_bert}", "model.name=tiny", "model.shape=null",
           "task.train_size=16",
           "task.eval_size=16", "train.max_seq_len=32", "train.threads=1", "train.max_steps=2",
           "experiment_name=submitit", "lora.r=2,4"]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    recs = [json.loads(f.read_text()) for f in out.rglob("record.json")]
    assert sorted(r["config"]["lora"]["r"] for r in recs) == [2, 4] and {r["status"] for r in recs} == {"ok"}
    assert list(out.rglob(".submitit"))  # submitit ran them
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and len(list(out.rglob("record.json"))) == 2, p.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory, minilm_path) -> str:
    """A tiny random BERT without dropout (nor in its head): two processes then compute exactly what one does."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_bert_nodrop")
    BertModel(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(d)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(d)
    return str(d)


@pytest.mark.slow
@needs_data
def test_two_processes_under_accelerate_match_one_process(tmp_path, tiny_bert_no_dropout):
    """DDP over gloo, 2 processes x 8 examples vs 1 process x 16: the same global batch (the whole 16-example
    train set each step), so the same loss curve; only process 0 writes the record."""
    common = [f"model.source={tiny_bert_no_dropout}", "model.name=tiny", "model.shape=null",
              "model.max_position=128", "task=rte",
              "task.train_size=16", "task.eval_size=16", "train.max_seq_len=64", "train.threads=1",
              "train.max_steps=3", "train.lr=1e-2", "lora.dropout=0", "lora.targets=qv", "train.save_adapter=false",
              f"paths.output_root={tmp_path / 'out'}"]
    one = subprocess.run([sys.executable, "-m", "harness.run", *common, "train.batch_size=16",
                          f"hydra.run.dir={tmp_path / 'one'}"], cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch",
                          "--config_file", str(REPO / "conf" / "accelerate" / "cpu_2proc.yaml"),
                          "-m", "harness.run", *common, "train.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}"],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    r1 = json.loads((tmp_path / "one" / "record.json").read_text())
    r2 = json.loads((tmp_path / "two" / "record.json").read_text())
    assert r2["distributed"]["world_size"] == 2 and r2["distributed"]["backend"] == "gloo"
    l1, l2 = r1["metrics"]["train_loss"]["log"], r2["metrics"]["train_loss"]["log"]
    assert len(l1) == len(l2) == 3 and l1[0] != l1[-1]  # it trained
    assert l2 == pytest.approx(l1, rel=1e-4, abs=1e-5)
    assert r2["metrics"]["final"]["validation"]["accuracy"] == pytest.approx(
        r1["metrics"]["final"]["validation"]["accuracy"])


@pytest.mark.skipif(not PG_URL and not os.environ.get("CI"), reason="no PostgreSQL server (HARNESS_TEST_POSTGRES_URL)")
def test_two_search_workers_share_one_study_in_postgresql():
    """The cross-machine setup: storage is a PostgreSQL URL, ask/tell is serialised by pg_advisory_lock, and two
    worker processes finish exactly the requested trials between them."""
    import optuna
    from optuna.trial import TrialState

    assert PG_URL, "CI must start PostgreSQL and set HARNESS_TEST_POSTGRES_URL (.ci/run does)"
    study = f"pg_{uuid.uuid4().hex[:8]}"
    ps = [subprocess.Popen([sys.executable, "-m", "tests.search_fakes", PG_URL, study, "12", "slow"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in ps]
    assert all(p.returncode == 0 for p in ps), outs
    st = optuna.load_study(study_name=study, storage=PG_URL)
    states = [t.state for t in st.trials]
    assert len(states) == 12 and all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states), states
    assert len({t.user_attrs["worker"] for t in st.trials}) == 2  # both took trials
    assert not any("Traceback" in o for o in outs), outs
    optuna.delete_study(study_name=study, storage=PG_URL)
