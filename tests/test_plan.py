"""Memory planner: exact weight bytes against models loaded with each method (tiny random models built from a
config), the papers' arithmetic, activations that scale with the batch, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from harness import methods, models
from harness.plan import GB, largest_batch, make_plan, quantized_bytes
from tests.conftest import REPO, save_random_llama

QUANT = ["qlora_int8", "qlora_fp4", "qlora_fp4_dq", "qlora_nf4", "qlora_nf4_dq"]


def shape_overrides(path, arch: str) -> list[str]:
    cfg = json.loads((path / "config.json").read_text())
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "type_vocab_size")
    shape = ", ".join(f"{k}: {str(cfg[k]).lower() if isinstance(cfg[k], bool) else cfg[k]}" for k in keys if k in cfg)
    # smollm2_135m's shape has the same keys (Llama), each replaced by the tiny model's value
    return ["model=smollm2_135m", f"model.source={path}", f"model.arch={arch}", "model.name=tiny",
            "model.max_position=128", f"++model.shape={{{shape}}}"]


@pytest.fixture(scope="module")
def tiny_llama_lm(tmp_path_factory):
    """A random 2-layer Llama with an untied LM head (as a causal LM folder) and its shape overrides."""
    d = tmp_path_factory.mktemp("tiny_llama_lm")
    save_random_llama(d, 128, 2, 4, 2, 256)
    return d


def held_bytes(model) -> dict:
    """What a loaded model holds: quantized linear layers (weights + constants) and everything else."""
    st = methods.quantized_storage(model)
    q = {x["name"] for x in st}
    other = 0
    for n, p in model.named_parameters():
        if n.rsplit(".", 1)[0] in q and n.endswith(".weight"):
            continue
        other += p.numel() * p.element_size()
    return {"quantized": sum(x["weight_bytes"] for x in st),
            "constants": sum(x["absmax_bytes"] + x["absmax2_bytes"] + x["per_tensor_bytes"] for x in st),
            "other": other}


@pytest.mark.parametrize("method", QUANT + ["lora", "lora_bf16"])
def test_planned_weight_bytes_equal_the_bytes_a_loaded_model_holds(tiny_llama_lm, method):
    ovr = shape_overrides(tiny_llama_lm, "llama") + [f"method={method}", "task=wikisql"]
    p = make_plan(ovr, device="cpu")
    from harness.config import compose

    cfg = compose(ovr)
    bnb = methods.bnb_config(cfg.method, torch.bfloat16)
    model = models.load_causal_lm(str(tiny_llama_lm), cfg.model, quantization_config=bnb,
                                  dtype=methods.base_dtype(cfg.method), device="cpu")
    held = held_bytes(model)
    assert p.parts.get("base weights: quantized linear layers", 0) == held["quantized"]
    assert p.parts.get("base weights: quantization constants", 0) == held["constants"]
    kept = next(v for k, v in p.parts.items() if k.startswith("base weights: kept"))
    assert kept == held["other"]


def test_double_quantization_saves_0_373_bits_per_weight():
    shape = (8192, 8192)
    n = shape[0] * shape[1]
    nf4, dq = quantized_bytes(shape, "nf4", False), quantized_bytes(shape, "nf4", True)
    assert 8 * nf4["constants"] / n == pytest.approx(0.5)
    assert 8 * dq["constants"] / n == pytest.approx(8 / 64 + 32 / (64 * 256))
    assert 8 * (nf4["constants"] - dq["constants"]) / n == pytest.approx(0.373, abs=5e-4)
    assert quantized_bytes((4096, 11008), "int8", False) == {"weight": 4096 * 11008, "constants": 11008 * 4, "code": 0}


def test_paper_scale_figures_from_the_shape_alone():
    # LLaMA-65B, 16-bit full fine-tuning: 12 bytes per parameter before activations -> more than 780 GB
    full = make_plan(["model=llama_65b", "method=full", "method.base_dtype=bf16", "train.batch_size=1",
                      "train.max_seq_len=256", "train.gradient_checkpointing=true"])
    assert 65e9 < full.params["total"] < 66.5e9
    fixed = sum(v for k, v in full.parts.items() if k.startswith(("base weights", "gradients", "optimizer state")))
    assert fixed == pytest.approx(12 * full.params["total"], rel=1e-6) and fixed > 780 * GB
    assert full.total > fixed  # the optimizer step adds its temporaries on top
    # QLoRA of LLaMA-65B, the paper's recipe: under 48 GB
    q = make_plan(["model=llama_65b", "method=qlora_nf4_dq", "method.base_dtype=bf16", "lora.r=64",
                   "lora.targets=all_linear", "train.optimizer=paged_adamw", "train.batch_size=1",
                   "train.max_seq_len=512", "train.gradient_checkpointing=true"], lora_dtype="bf16")
    assert q.total < 48 * GB and q.resident < q.total
    assert q.fits(80) and not q.fits(24)


def test_activations_grow_with_the_batch_and_checkpointing_cuts_them():
    base = ["model=smollm2_135m", "method=lora", "task=wikisql", "train.max_seq_len=64"]
    p1 = make_plan(base + ["train.batch_size=1"], device="cpu")
    p4 = make_plan(base + ["train.batch_size=4"], device="cpu")
    assert p4.parts["activations"] == pytest.approx(4 * p1.parts["activations"], rel=0.02)
    assert p4.parts["loss buffers"] == 4 * p1.parts["loss buffers"] == 4 * 64 * 49152 * 4
    ck = make_plan(base + ["train.batch_size=4", "train.gradient_checkpointing=true"], device="cpu")
    assert ck.parts["activations"] < p4.parts["activations"] / 3
    # the largest batch: a plan at that batch fits a 24 GB GPU, a few more sequences do not
    b = largest_batch(p4, 24)
    assert b > 4
    assert make_plan(base + [f"train.batch_size={b}"], device="cpu").fits(24)
    assert not make_plan(base + [f"train.batch_size={int(b * 1.03) + 2}"], device="cpu").fits(24)
    # the peak is the larger of the backward pass and the optimizer step
    ph = p4.phases()
    assert p4.total == max(ph.values()) and ph["backward"] > ph["optimizer step"]


def test_lora_trainable_parameters_match_the_formula():
    p = make_plan(["model=llama_7b", "method=qlora_nf4", "lora.r=8", "lora.targets=qv", "train.batch_size=1",
                   "train.max_seq_len=32"])
    assert p.params["trainable"] == 32 * 2 * 8 * (4096 + 4096)
    assert p.parts["trainable: LoRA and head"] == 4 * p.params["trainable"]
    assert p.parts["optimizer state"] == 8 * p.params["trainable"]


def test_plan_cli_prints_every_method_and_rejects_bad_input():
    p = subprocess.run([sys.executable, "-m", "harness.plan", "model=smollm2_135m", "train.batch_size=2",
                        "train.max_seq_len=64"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    for m in ("full", "lora", "qlora_int8", "qlora_fp4_dq", "qlora_nf4_dq", "fits 24 GB", "batch <="):
        assert m in p.stdout
    bad = subprocess.run([sys.executable, "-m", "harness.plan", "model=llama_9000"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "llama_65b" in bad.stderr  # Hydra lists the valid models
    bad = subprocess.run([sys.executable, "-m", "harness.plan", "model=smollm2_135m", "--lora-dtype", "fp8"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "valid: fp32, bf16" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "harness.plan", "model=smollm2_135m", "plan.device=tpu"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "plan.device='tpu' is not valid; valid: ['cuda', 'cpu']" in bad.stderr


def test_a_plan_only_model_cannot_run():
    from harness.models import ModelError, resolve

    with pytest.raises(ModelError, match="memory planner only"):
        resolve("plan-only:gpt3_175b", "/tmp", "gpt3_175b")


@pytest.mark.slow
def test_a_run_records_the_plan_beside_its_measured_peak_within_15_percent(tmp_path):
    """MiniLM-L6, QLoRA NF4+DQ, batch 32 x 32 tokens, 4 steps (reports/memory/ has every method at batch 8 and 32)."""
    from tests.conftest import DATA

    if not DATA.is_dir():
        pytest.skip("../shared/data is not beside the repo")
    # bf16 autocast at batch 32, as reports/memory/ measured: 1.00 on a 2-core EPYC with AVX512-BF16, 1.04 with AVX2
    # emulated. At batch 8 the resident set's run-to-run noise is a larger share of the peak: 0.91-0.93 here, 0.84 once
    # on a fresh clone (199.5 MiB measured against 181-184 in every rerun). In fp32 the plan is 13-15% above the
    # measured peak at either batch (458 vs 397 MiB at batch 32), on the edge of the tolerance: not what this pins.
    p = subprocess.run([sys.executable, "-m", "harness.run", "+experiment=memory_minilm", "model=minilm_l6",
                        "task=stsb", "method=qlora_nf4_dq", "method.compute_dtype=bf16", "train.batch_size=32",
                        f"paths.output_root={tmp_path}",
                        f"hydra.run.dir={tmp_path}/run"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    mem = rec["memory"]
    assert rec["throughput"]["longest_batch"] == {"batch_size": 32, "seq_len": 32}
    assert 0.85 <= mem["plan"]["ratio"] <= 1.15, mem["plan"]
    bd = mem["breakdown"]  # measured by category: the weights the planner counts, to the byte (in MB here)
    planned_w = sum(v for k, v in mem["plan"]["parts_mb"].items() if k.startswith(("base weights", "trainable")))
    assert bd["weights_mb"] == pytest.approx(planned_w, rel=0.01)
    assert bd["optimizer_state_mb"] == pytest.approx(mem["plan"]["parts_mb"]["optimizer state"], rel=0.01)
    # the memory report renders this record, and its summary.json holds the same numbers and the papers' figures
    from harness.report.memory import render
    from harness.store import Store

    store = Store(str(tmp_path))
    store.sync()
    page = render(store, tmp_path / "reports")
    summary = json.loads((page.parent / "summary.json").read_text())
    (row,) = summary["measured"]["rows"]
    assert row["method"] == "qlora_nf4_dq" and row["measured_mb"] == pytest.approx(mem["peak_mb"])
    assert summary["measured"]["within"] == int(row["within_tolerance"]) and summary["measured"]["n"] == 1
    assert f"{row['measured_mb']:,.0f}" in page.read_text()
    figs = {f["figure"].split(":")[0]: f for f in summary["paper_figures"]}
    full = figs["16-bit full fine-tuning of LLaMA-65B"]
    assert full["paper"] == "more than 780 GB" and full["ours"] > 780 and full["verdict"] == "holds"
    assert {p["peer"] for p in summary["peers"]} == {"LitGPT", "torchtune"}


def test_a_recorded_run_is_planned_in_the_dtype_it_computed_in_whatever_auto_means_here():
    from harness.config import compose, resolved
    from harness.plan import plan_for_record

    cfg = resolved(compose(["model=minilm_l6", "task=stsb", "method=lora", "method.compute_dtype=auto"]))
    rec = {"config": cfg, "host": {"device": "cpu"}, "throughput": {"longest_batch": {"batch_size": 8, "seq_len": 32}}}
    fp32 = plan_for_record(rec | {"method": {"compute_dtype": "float32"}})
    bf16 = plan_for_record(rec | {"method": {"compute_dtype": "bfloat16"}})
    assert fp32.setting["compute_dtype"] == "float32" and bf16.setting["compute_dtype"] == "bfloat16"
    assert fp32.total != bf16.total  # bf16 activations: a different plan


def test_an_lm_that_scored_only_its_answers_is_planned_with_logits_at_those_positions():
    """train.scored_logits_only: a record's longest batch carries scored_tokens, and the plan's loss buffers and
    traced output-layer activations shrink to those positions; a record without it (logits everywhere, as runs
    before the key computed) is planned at every position, and so is a plan before any run (the most it can be)."""
    from harness.config import compose, resolved
    from harness.plan import plan_for_record

    cfg = resolved(compose(["model=smollm2_135m", "task=wikisql", "method=lora", "method.compute_dtype=fp32"]))
    longest = {"batch_size": 4, "seq_len": 64}
    rec = {"config": cfg, "host": {"device": "cpu"}, "method": {"compute_dtype": "float32"}}
    every = plan_for_record(rec | {"throughput": {"longest_batch": longest}})
    scored = plan_for_record(rec | {"throughput": {"longest_batch": longest | {"scored_tokens": 40}}})
    assert every.parts["loss buffers"] == 4 * 64 * 49152 * 4 and "at most" not in every.notes["loss buffers"]
    assert scored.parts["loss buffers"] == 40 * 49152 * 4 and "40 scored positions" in scored.notes["loss buffers"]
    # fp32 logits saved for the backward pass: [4 x 64] positions' worth against [4 x 10] (ceil(40 / 4) per row)
    saved = every.parts["activations"] - scored.parts["activations"]
    assert saved == pytest.approx((4 * 64 - 4 * 10) * 49152 * 4, rel=0.05)
    ahead = make_plan(["model=smollm2_135m", "task=wikisql", "method=lora", "method.compute_dtype=fp32",
                       "train.batch_size=4", "train.max_seq_len=64"], device="cpu")
    assert ahead.parts["loss buffers"] == every.parts["loss buffers"] and "at most" in ahead.notes["loss buffers"]


def test_attention_without_dropout_is_traced_as_the_fused_kernel_a_run_takes():
    """A run's attention without dropout is a fused kernel (flash attention: no [batch, heads, seq, seq]
    probabilities kept for the backward pass); with attention dropout it takes the math path, which keeps them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.plan import trace_activations

    got = {}
    for p in (0.0, 0.1):
        cfg = LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=128, attention_dropout=p)
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        model.train()
        got[p] = trace_activations(model, 2, 32, "lm")["layers"]
    # per element of the layers x batch x heads x seq x seq probabilities, the math path keeps ~12 bytes (fp32
    # probabilities before and after dropout, the mask); without the fused trace, the dropout-free model would keep
    # at least the 4 bytes of its softmax output, and the difference would be under 8
    elems = 2 * 2 * 4 * 32 * 32
    assert got[0.1] - got[0.0] >= 10 * elems
