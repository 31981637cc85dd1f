"""End to end: `python -m harness.run` in fresh processes, with the shipped models and the real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import DATA, REPO, save_random_llama, with_test_defaults

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")]


def run(tmp_path: Path, *overrides: str, expect_ok: bool = True) -> dict:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "harness.run", f"paths.output_root={out}", "train.threads=1",
         *with_test_defaults(overrides)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    recs = sorted(out.glob("runs/*/*/record.json"), key=lambda f: f.stat().st_mtime)
    assert recs, p.stderr[-3000:]
    rec = json.loads(recs[-1].read_text())
    if expect_ok:
        assert p.returncode == 0 and rec["status"] == "ok", (p.stderr[-3000:], rec.get("error"))
    return rec


def test_minilm_sst2_lora_record_is_complete(tmp_path):
    rec = run(tmp_path, "lora.targets=qv", "task.train_size=96", "task.eval_size=64", "train.max_steps=4", "train.eval_every=2",
              "train.batch_size=16")
    assert rec["config_hash"] and rec["config"]["model"]["name"] == "minilm_l6"
    assert rec["task"]["train_examples"] == 96 and rec["task"]["eval_examples"] == {"validation": 64}
    m = rec["metrics"]
    assert 0 <= m["final"]["validation"]["accuracy"] <= 1
    assert [h["step"] for h in m["history"]] == [2, 4, 4]  # two evaluations during training, then the final
    assert m["best"]["validation"]["accuracy"] == max(h["metrics"]["validation"]["accuracy"] for h in m["history"])
    p = rec["params"]
    assert p["trainable"] == 6 * 2 * 8 * (384 + 384) + 384 * 2 + 2  # r(d_in + d_out) per adapted matrix + head
    assert 22_000_000 < p["total"] < 23_000_000
    assert rec["adapter"]["bytes"] > 4 * p["adapter"]  # fp32 adapter weights (plus the head) on disk
    mem, thr = rec["memory"], rec["throughput"]
    assert mem["train_peak_mb"] >= mem["after_load_mb"] > mem["baseline_mb"] > 0
    assert mem["exact"] and "glibc exact" in mem["method"]  # the allocator was switched to exact
    # the window of exact memory closed after the second optimizer step, with a probe of the largest batch
    assert mem["window"]["optimizer_steps"] == 2 and mem["window"]["probe_batch"]["batch_size"] == 16
    assert mem["rss_hwm_after_training_mb"] is not None and thr["memory_probe_s"] > 0
    assert rec["host"]["openmp_wait"]["GOMP_SPINCOUNT"] and rec["host"]["openmp_wait"]["OMP_WAIT_POLICY"]
    assert thr["steps"] == 4 and thr["train_samples"] == 64
    assert 0 < thr["train_tokens"] <= 64 * 64 and thr["tokens_per_s"] > 0 and thr["median_step_s"] > 0
    assert rec["versions"]["torch"].startswith("2.") and rec["host"]["cores"] >= 1
    assert rec["status"] == "ok" and rec["seed"] == 0


def test_mnli_reports_matched_and_mismatched(tmp_path):
    # train split is not shipped locally; train on the matched subset via a path override
    rec = run(tmp_path, "task=mnli", "task.train_split=validation_matched", "task.train_size=32",
              "task.eval_size=32", "train.max_steps=2", "train.batch_size=16")
    assert set(rec["metrics"]["final"]) == {"validation_matched", "validation_mismatched"}


def test_stsb_regression_reports_pearson_and_spearman(tmp_path):
    rec = run(tmp_path, "task=stsb", "task.train_size=32", "task.eval_size=64", "train.max_steps=2",
              "train.batch_size=16", "method=full")
    final = rec["metrics"]["final"]["validation"]
    assert {"pearson", "spearman"} <= set(final) and rec["params"]["trainable"] == rec["params"]["total"]


def test_smollm2_converts_once_and_classifies_with_last_token_pooling(tmp_path):
    rec = run(tmp_path, "model=smollm2_135m", "task.train_size=8", "task.eval_size=8", "train.max_steps=1",
              "train.batch_size=4", "train.max_seq_len=32", "lora.targets=qkvo")
    assert rec["model"]["arch"] == "llama" and rec["model"]["pooling"] == "last"
    assert sorted(rec["method"]["lora"]["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert 134_000_000 < rec["params"]["total"] < 136_000_000
    assert Path(rec["model"]["path"], "model.safetensors").is_file()


def test_failed_run_is_recorded_with_error(tmp_path):
    rec = run(tmp_path, "train.optimizer=paged_adamw_8bit", "task.train_size=8", "task.eval_size=8",
              "train.max_steps=1", "model.source=/nonexistent/model/dir", expect_ok=False)
    assert rec["status"] == "failed" and rec["error"] and rec["traceback"]


@pytest.fixture(scope="module")
def llama_40m(tmp_path_factory):
    """A random Llama of about 40M parameters (8 layers x 512; 25M of them in linear layers)."""
    return save_random_llama(tmp_path_factory.mktemp("llama_mem"), 512, 8, 8, 8, 1408)


def test_training_peak_memory_orders_full_over_lora_over_qlora(tmp_path, llama_40m):
    """Identical settings (gradient checkpointing on for all): full FT > LoRA > QLoRA-NF4+DQ."""
    peaks = {}
    for method in ("full", "lora", "qlora_nf4_dq"):
        rec = run(tmp_path / method, f"method={method}", f"model.source={llama_40m}", "model.arch=llama",
                  "model.pooling=last", "model.name=llama_mem", "model.shape=null", "task.train_size=16",
                  "task.eval_size=8",
                  "train.max_steps=2", "train.batch_size=8", "train.max_seq_len=32",
                  "train.gradient_checkpointing=true", "method.compute_dtype=fp32", "train.save_adapter=false")
        peaks[method] = rec["memory"]["peak_mb"]
    assert peaks["full"] > peaks["lora"] > peaks["qlora_nf4_dq"], peaks
    # the 4-bit base must save most of the linear weights' 4 bytes/param (25M linear params: ~100 MB)
    assert peaks["lora"] - peaks["qlora_nf4_dq"] > 50, peaks


def test_smollm2_wikisql_sft_generates_and_scores(tmp_path):
    """Causal LM end to end: SFT steps on WikiSQL with prompt masking, greedy generation with a stop string,
    logical-form accuracy and answer loss in the record, predictions written beside it, adapter saved."""
    rec = run(tmp_path, "model=smollm2_135m", "task=wikisql", "task.train_size=8", "task.eval_size=4",
              "train.max_steps=2", "train.batch_size=4", "train.eval_batch_size=4", "task.max_new_tokens=12",
              "lora.targets=all_linear", "train.lr=1e-4")  # two steps at the recipe's lr can leave it answering "\n"
    assert rec["task"]["kind"] == "generation" and rec["model"]["head"] == "causal_lm"
    final = rec["metrics"]["final"]["validation"]
    assert {"logical_form_accuracy", "exact_match", "loss"} <= set(final) and final["answer_tokens"] > 0
    mods = rec["method"]["lora"]["target_modules"]
    assert any(m.endswith("gate_proj") for m in mods) and any(m.endswith("down_proj") for m in mods)
    assert not any("lm_head" in m for m in mods)
    gen = rec["generation"]["validation"]
    # each pass decodes at most max_new_tokens steps; a row that opened with the stop string goes on in another
    assert gen["examples"] == 4 and gen["decode_steps"] <= 12 * (1 + gen["restarts"]) and gen["tokens_per_s"] > 0
    preds = [json.loads(x) for x in (Path(rec["adapter"]["path"]).parent / "predictions/validation.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all("\n" not in p["pred"] and p["gold"].startswith("SELECT") for p in preds)
    assert rec["throughput"]["steps"] == 2 and rec["task"]["train_answer_tokens_per_epoch"] > 0
    assert rec["model"]["linear_storage"]["bits_per_param"] == 32.0
    # logits only at the answers' positions (train.scored_logits_only): the most one batch scored is recorded
    longest = rec["throughput"]["longest_batch"]
    assert 0 < longest["scored_tokens"] < longest["batch_size"] * longest["seq_len"] / 2
    # the record's memory plan is made at that batch, with the output layer at the scored positions
    plan = rec["memory"]["plan"]
    assert plan["setting"]["max_seq_len"] == longest["seq_len"] < rec["config"]["train"]["max_seq_len"]
    assert plan["parts_mb"]["loss buffers"] == pytest.approx(longest["scored_tokens"] * 49152 * 4 / 2**20)


def test_evaluation_only_run_of_a_4bit_base(tmp_path):
    """train.max_steps=0: nothing trains; the quantized base is scored (QLoRA Table 2's runs)."""
    rec = run(tmp_path, "model=smollm2_135m", "task=alpaca", "task.metrics=[perplexity,loss]",
              "task.holdout_size=4", "train.max_steps=0", "method=qlora_nf4_dq", "train.eval_batch_size=4",
              "train.max_seq_len=64")
    assert rec["method"]["trained"] is False and rec["throughput"] is None and "adapter" not in rec
    final = rec["metrics"]["final"]["validation"]
    assert final["perplexity"] > 1 and abs(final["perplexity"] - 2.718281828 ** final["loss"]) < 1e-6 * final["perplexity"]
    s = rec["model"]["linear_storage"]
    assert s["storage"] == ["nf4"] and 4.1 < s["bits_per_param"] < 4.2
    assert abs(s["bits_per_param_blocks"] - (4 + 8 / 64 + 32 / (64 * 256))) < 0.003  # the paper's 4.127
    from harness.record import RunRecord

    assert RunRecord.read(rec, strict=True).as_dict() == rec  # the written record is exactly its declared shape
    # each answer's NLL and token count beside the record: they add up to the run's loss (reports bootstrap them)
    (pred_file,) = (tmp_path / "out").glob("runs/*/*/predictions/validation.jsonl")
    rows = [json.loads(x) for x in pred_file.read_text().splitlines()]
    assert len(rows) == 4 and sum(r["tokens"] for r in rows) == final["answer_tokens"]
    assert abs(sum(r["nll"] for r in rows) / final["answer_tokens"] - final["loss"]) < 1e-6 * final["loss"]


def run_here(tmp_path: Path, *overrides: str) -> dict:
    """harness.run's execute in this process (the pieces above already run it in a fresh one): the record."""
    from harness.runner import execute
    from tests.conftest import compose

    rec = execute(compose([f"paths.output_root={tmp_path / 'out'}", "train.threads=1", *overrides]), tmp_path / "run")
    assert rec["status"] == "ok", rec.get("error")
    return rec


def test_e2e_nlg_run_generates_once_per_mr_and_scores_every_reference(tmp_path):
    """The E2E task end to end on a tiny random Llama: train on (MR, reference) pairs, generate once per test MR,
    score against all its references; predictions carry the references."""
    path = save_random_llama(tmp_path / "tiny", 64, 2, 4, 2, 128)
    rec = run_here(tmp_path, f"model.source={path}", "model.arch=llama", "model.name=tiny", "model.max_position=256",
                   "model.shape=null", "task=e2e", "task.train_size=8", "task.eval_size=3", "train.max_steps=2",
                   "train.batch_size=4", "train.eval_batch_size=4", "task.max_new_tokens=6",
                   "task.metrics=[bleu,nist,rouge_l,cider,loss]")
    final = rec["metrics"]["final"]["test"]
    assert {"bleu", "nist", "rouge_l", "cider", "loss"} <= set(final)
    assert rec["generation"]["test"]["examples"] == 3  # three MRs, each with several references
    preds = [json.loads(x) for x in (Path(rec["adapter"]["path"]).parent / "predictions/test.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(len(p["refs"]) > 1 and p["group"].startswith("name : ") for p in preds)
    assert rec["task"]["eval_examples"]["test"] == sum(len(p["refs"]) for p in preds)  # every reference's loss


def test_a_simulated_int4_base_is_scored_and_its_error_recorded(tmp_path):
    """QLoRA Table 2's Int4 row on MiniLM: the linear weights rounded to Int4 codes in torch, scored zero-shot."""
    rec = run_here(tmp_path, "model=minilm_l6", "task=stsb", "task.pair_encoding=bi", "task.eval_size=64",
                   "method=fake_int4", "train.max_steps=0")
    fq = rec["model"]["fake_quant"]
    assert fq["type"] == "int4" and fq["layers"] == 36 and 0.05 < fq["rel_error_mean"] < 0.3
    assert 0 < rec["metrics"]["final"]["validation"]["pearson"] < 1
