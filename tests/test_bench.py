"""bench/throughput.py: its two paths (seed recipe, ours) compute the same loss on the same batch; its FLOP count
agrees with torch's FLOP counter; its report's verdicts. No timings are asserted."""

from __future__ import annotations

import json

import pytest
import torch

from bench import report, throughput
from tests.conftest import DATA

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def _features(ds, n):
    return [{k: ds[i][k] for k in MODEL_KEYS if k in ds.column_names} for i in range(n)]


def _both_batches(p, n=8):
    cfg, tok = p["cfg"], p["tokenizer"]
    df = p["train_df"].iloc[:n]
    seed_ds = throughput.tokenized(cfg, df, tok, seed_recipe=True, norm=p["norm"])
    ours_ds = throughput.tokenized(cfg, df, tok, seed_recipe=False, norm=p["norm"])
    seed = throughput.seed_collator(cfg, tok)(_features(seed_ds, n))
    ours = throughput.ours_collator(cfg, tok)(_features(ours_ds, n))
    return seed, ours


def _check_same_batch(seed, ours, max_len):
    assert seed["input_ids"].shape[1] == max_len  # the seed recipe pads every example to the limit
    assert ours["input_ids"].shape[1] < max_len  # ours to the batch's longest (rounded to 8)
    for i in range(seed["input_ids"].shape[0]):  # the same real tokens, in the same places
        k = int(ours["attention_mask"][i].sum())
        assert int(seed["attention_mask"][i].sum()) == k
        assert torch.equal(seed["input_ids"][i, :k], ours["input_ids"][i, :k])


def test_classification_paths_same_loss_on_same_batch():
    w = throughput.WORKLOADS["minilm"]
    p = throughput.prepare(w, "lora", "seed")
    seed, ours = _both_batches(p)
    _check_same_batch(seed, ours, w.max_seq_len)
    assert torch.allclose(seed["labels"].float(), ours["labels"].float())
    a, b = throughput.batch_loss(p["model"], seed), throughput.batch_loss(p["model"], ours)
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_causal_lm_paths_same_loss_on_same_batch():
    """DataCollatorForLanguageModeling (labels = ids, pads ignored) and ours (SFTCollator, empty prompt)."""
    w = throughput.WORKLOADS["smollm2"]
    p = throughput.prepare(w, "lora", "seed")
    seed, ours = _both_batches(p, 4)
    _check_same_batch(seed, ours, w.max_seq_len)
    for i in range(4):
        k = int(ours["attention_mask"][i].sum())
        assert torch.equal(seed["labels"][i, :k], ours["labels"][i, :k])
        assert (seed["labels"][i, k:] == -100).all() and (ours["labels"][i, k:] == -100).all()
    a, b = throughput.batch_loss(p["model"], seed), throughput.batch_loss(p["model"], ours)
    assert a == pytest.approx(b, rel=1e-4)


def test_flop_count_matches_torch_flop_counter():
    """4 x frozen + 6 x trained linear weights per token vs torch's count of one forward + backward on an
    unpadded batch (the difference: attention-score products, and layer 0's input gradients are not needed)."""
    from torch.utils.flop_counter import FlopCounterMode

    w = throughput.WORKLOADS["minilm"]
    p = throughput.prepare(w, "lora", "seed")
    model = p["model"]
    model.train()
    ds = throughput.tokenized(p["cfg"], p["train_df"].iloc[:4], p["tokenizer"], seed_recipe=False, norm=p["norm"])
    lengths = ds["length"]
    total = 0
    for i in range(4):  # one example per batch: no padding
        batch = throughput.ours_collator(p["cfg"], p["tokenizer"])(_features(ds.select([i]), 1))
        batch = {k: v[:, :lengths[i]] if v.dim() == 2 else v for k, v in batch.items()}
        with FlopCounterMode(display=False) as fc:
            model(**batch).loss.backward()
        total += fc.get_total_flops()
    est = throughput.train_flops(model)["per_token"] * sum(lengths)
    assert throughput.train_flops(model)["trained_linear"] > 0
    assert est == pytest.approx(total, rel=0.08)


def _run(model, method, path, tps, loss, seed=0, mfu=0.1):
    return {"workload": f"{model}_w", "model": model, "task": "t", "method": method, "path": path, "seed": seed,
            "tokens_per_s": tps, "heldout_loss_after": loss, "heldout_loss_before": 1.0, "mfu": mfu,
            "compute_dtype": "fp32" if path == "seed" else "bf16", "step_s_median": 1.0, "real_tokens": 100,
            "flops": {"per_token": 1e6, "frozen_linear": 2e5, "trained_linear": 1e3}}


@pytest.mark.parametrize("ratio2,loss1,verdict,noise_word", [
    (1.6, 0.505, "holds", "within noise"),
    (1.2, 0.505, "fails", "within noise"),
    (1.6, 0.7, "holds", "LARGER than the seed-to-seed gap"),
])
def test_report_verdicts(ratio2, loss1, verdict, noise_word):
    res = {"machine": {"cpu": "x", "logical_cpus": 2, "torch_threads": 2, "bf16_native": True, "torch": "t",
                       "transformers": "t", "peft": "p", "bitsandbytes": "b", "python": "3"},
           "started": "s", "finished": "f", "warmup_steps": 2, "peak_flops": {"fp32": 1e11, "bf16": 1e12},
           "workloads": {}, "fixed_cost": {},
           "runs": [_run("a", "lora", "seed", 100, 0.5), _run("a", "lora", "ours", 300, 0.51),
                    _run("a", "lora", "ours", 300, 0.52, seed=1),
                    _run("b", "lora", "seed", 100, 0.5), _run("b", "lora", "ours", 100 * ratio2, loss1),
                    _run("b", "lora", "ours", 100 * ratio2, loss1 + 0.01, seed=1)]}
    rows = report.summary(res)
    assert [r["ratio"] for r in rows] == pytest.approx([3.0, ratio2])
    assert report.goal(rows)[0] == verdict
    md = report.render(res)
    assert f"**{verdict}**" in md and noise_word in md


def test_bad_choice_names_the_valid_ones():
    with pytest.raises(SystemExit, match=r"\['bert'\] not among \['minilm', 'smollm2'\]"):
        throughput.main(["--models", "bert"])


def test_the_ceiling_alone_needs_the_results_file_it_adds_to(tmp_path):
    with pytest.raises(SystemExit, match=r"results_zz.json does not exist \(run the bench with tag=zz first\)"):
        throughput.main(["ceiling_only=true", f"out={tmp_path}", "tag=zz"])


def test_inference_bench_variants_compute_what_they_claim_and_render():
    """bench/inference.py on MiniLM (two rounds: no timing is asserted): merged LoRA computes what the unmerged
    adapter does, the adapter changes the outputs, the 4-bit base's merged copy matches its unmerged form."""
    from bench import inference

    r = inference.bench_model("minilm", rounds=2, gen_rounds=1)
    # the 4-bit base computes in method.compute_dtype=auto's dtype: in bf16 (a CPU with AVX512-BF16 or AMX) one
    # rounding step of an output near 1 is 2^-7 = 0.0078 (measured: exactly that), so two steps are allowed there
    qtol = 1e-3 if r["qlora_compute_dtype"] == "float32" else 2 * 2**-7
    for d in r["max_abs_diff"].values():
        assert d["lora_merged_vs_lora"] < 1e-4 and d["qlora_merged_vs_qlora"] < qtol and d["lora_vs_base"] > 1e-3
    assert r["qlora_dequantized_layers"] > 0 and not r["generate"]  # an encoder: forward only
    assert set(r["forward"]["b8"]["variants"]) == set(inference.VARIANTS)
    text = report.render_inference({"machine": throughput.machine(), "started": "s", "finished": "f", "rounds": 2,
                                    "gen_rounds": 1, "max_len": inference.MAX_LEN, "gen_tokens": 32,
                                    "tolerance": inference.TOLERANCE, "env": {}, "models": {"minilm": r}})
    assert "LoRA merged into W" in text and "Merged LoRA vs the base model" in text


def test_the_latency_ratio_is_a_median_of_per_round_ratios_with_a_bootstrap_interval():
    from bench.inference import ratio

    same = ratio([1.0, 1.01, 0.99, 1.0] * 5, [1.0] * 20)
    assert same["median"] == pytest.approx(1.0) and same["within_tolerance"]
    slow = ratio([1.3, 1.32, 1.28] * 5, [1.0] * 15)
    assert slow["lo90"] > 1.05 and not slow["within_tolerance"]


def test_every_path_and_lever_composes_one_change_from_its_neighbour():
    from harness.config import compose as run_compose

    w = throughput.WORKLOADS["minilm"]
    cfgs = {p: run_compose(w.overrides("lora", p)) for p in throughput.PATHS}
    t = {p: c.train for p, c in cfgs.items()}
    assert [t[p].fast_dropout for p in ("seed", "dynamic", "grouped", "fast_dropout", "ours")] == \
        [False, False, False, True, True]
    assert [t[p].group_by_length for p in ("seed", "dynamic", "grouped")] == [False, False, True]
    assert str(cfgs["fast_dropout"].method.compute_dtype) == "fp32" and str(cfgs["ours"].method.compute_dtype) == "auto"
    assert (t["batch_x2"].batch_size, t["batch_x2"].max_steps) == (2 * w.batch_size, w.steps // 2)
    assert cfgs["batch_x2"].task.train_size == cfgs["ours"].task.train_size  # the same examples
    assert str(t["fused_adamw"].optimizer) == "adamw_fused"
    assert cfgs["lora_dropout_torch"].lora.dropout == cfgs["lora_dropout_fast"].lora.dropout == 0.1
    assert not t["lora_dropout_torch"].fast_dropout and t["lora_dropout_fast"].fast_dropout
    assert str(run_compose(w.overrides("lora", "ours", compute="bf16")).method.compute_dtype) == "bf16"


def test_the_page_has_a_section_per_cpu_class_with_its_goals(tmp_path):
    import json

    base = {"machine": {"cpu": "x", "logical_cpus": 2, "torch_threads": 2, "bf16_native": False, "torch": "t",
                        "transformers": "t", "peft": "p", "bitsandbytes": "b", "python": "3"},
            "started": "s", "finished": "f", "warmup_steps": 2, "peak_flops": {"fp32": 1e11}, "workloads": {},
            "fixed_cost": {}, "runs": [_run("a", "lora", "seed", 100, 0.5), _run("a", "lora", "ours", 300, 0.51, mfu=0.45)]}
    avx2 = base | {"env": {"ATEN_CPU_CAPABILITY": "avx2"}, "sharing": {
        "steps": 40, "solo_tokens_per_s": 600.0, "pair_tokens_per_s": [400.0, 200.0], "kept": [0.667, 0.333],
        "env": {"GOMP_SPINCOUNT": "1000"}}}
    bf16 = base | {"compute": "bf16", "runs": [_run("a", "lora", "seed", 100, 0.5), _run("a", "lora", "ours", 120, 0.5)]}
    (tmp_path / "results_avx2.json").write_text(json.dumps(avx2))
    (tmp_path / "results_bf16.json").write_text(json.dumps(bf16))
    text = report.page(tmp_path)
    assert text.index("## fp32 on an AVX2-only CPU") < text.index("## bf16 autocast (method.compute_dtype=bf16)")
    assert "(MFU) for LoRA on both models: **holds**" in text and "(MFU) for LoRA on both models: **fails**" in text
    assert "ours / seed recipe >= 1.5 in real tokens/s for LoRA on both models: **fails** (a 1.20x)" in text
    assert "Goal: each keeps >= 40% of its solo rate: **fails**" in text
    report.main([str(tmp_path)])
    summ = json.loads((tmp_path / "summary.json").read_text())
    assert [s["cpu_class"] for s in summ["sections"]] == ["AVX2 only, fp32", "AVX512-BF16, bf16"]
    assert [s["goals"]["mfu"]["verdict"] for s in summ["sections"]] == ["holds", "fails"]
    assert summ["sections"][0]["goals"]["sharing"]["verdict"] == "fails"
    assert "sharing" not in summ["sections"][1]["goals"]
    assert summ["sections"][1]["rows"][0]["ratio"] == pytest.approx(1.2)
    # auto on a native-bf16 CPU: AMX where machine() saw it (or said nothing: files from before it looked), else
    # AVX512-BF16
    native = {**base["machine"], "bf16_native": True}
    assert report.cpu_class(base | {"machine": native})[0] == "AMX, bf16"
    assert report.cpu_class(base | {"machine": native | {"amx": True}})[0] == "AMX, bf16"
    assert report.cpu_class(base | {"machine": native | {"amx": False}})[0] == "AVX512-BF16, bf16 (auto)"


def test_the_everyday_commands_wall_times_render_with_their_goals_on_the_avx2_class(tmp_path):
    from bench import commands

    log = "....\n[100%]\n1 failed, 397 passed, 1 skipped, 5 warnings in 376.20s (0:06:16)\nmake: *** Error 1\n"
    assert commands.outcome("test", log, tmp_path) == {"pytest": "1 failed, 397 passed, 1 skipped, 5 warnings",
                                                        "pytest_s": 376.2}
    m = {"cpu": "AMD EPYC", "logical_cpus": 2}
    avx2 = {"tag": "avx2", "machine": m, "started": "2026-12-02 18:44:05", "git": "abc",
            "env": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
            "commands": {"run": {"wall_s": 93.0, "rc": 0, "metric": "accuracy", "value": 0.777,
                                 "compute_dtype": "float32"},
                         "sweep": {"wall_s": 960.0, "rc": 0, "records": 15, "ok": 15},
                         "test": {"wall_s": 400.0, "rc": 0, "pytest": "398 passed"}}}
    bf16 = {**avx2, "tag": "bf16", "env": {}, "commands": {"run": {"wall_s": 60.0, "rc": 0}}}
    for tag, res in (("avx2", avx2), ("bf16", bf16)):
        (tmp_path / f"commands_{tag}.json").write_text(json.dumps(res))
    assert report.command_goals("avx2", avx2) == {"run": "holds", "sweep": "fails", "test": "holds"}
    assert report.command_goals("bf16", bf16) == {}  # the goals are for the AVX2-only class
    text = report.page(tmp_path)
    assert "93 s (1 min 33 s) **holds**; accuracy 77.7, float32" in text
    assert "960 s (16 min 00 s) **fails**; 15 of 15 runs ok" in text and "AVX512-BF16 or AMX" in text
    assert report.machine_summary(tmp_path)["commands"]["avx2"]["goals"]["sweep"] == "fails"


def test_the_shape_ceiling_times_the_flops_mfu_counts_and_renders_beside_ours(tmp_path):
    """shape_ceiling counts exactly the FLOPs train_flops counts for a step of `tokens` rows (4n frozen, 6n trained);
    the page states the ceiling and says when the MFU goal lies above it. No timing is asserted."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 16), torch.nn.Linear(32, 16))
    model[0].weight.requires_grad_(False)
    assert throughput.linear_shapes(model) == {(16, 32, False): 1, (32, 16, True): 2}
    c = throughput.shape_ceiling(model, tokens=10, dtype=torch.float32, round_s=0.001)
    assert c["flops"] == 10 * throughput.train_flops(model)["per_token"]
    assert c["flops_per_s"] > 0 and c["dtype"] == "fp32" and [x["products"] for x in c["shapes"]] == [2, 3]
    base = {"machine": {"cpu": "x", "logical_cpus": 2, "torch_threads": 2, "bf16_native": True, "torch": "t",
                        "transformers": "t", "peft": "p", "bitsandbytes": "b", "python": "3"},
            "started": "s", "finished": "f", "warmup_steps": 2, "peak_flops": {"bf16": 1e12}, "workloads": {},
            "fixed_cost": {}, "compute": "bf16",
            "runs": [_run("a", "lora", "seed", 100, 0.5), _run("a", "lora", "ours", 300, 0.51, mfu=0.2)],
            "ceiling": {"a_w": c | {"dtype": "bf16", "mfu": 0.3, "peak": 1e12}}}
    text = report.render(base)
    assert "a 30.0% of the bf16 peak measured beside it (ours reaches 67% of the ceiling's FLOP/s)" in text
    # with the FLOP/s at hand, ours over the ceiling is a ratio of FLOP/s, not of MFUs against two peaks
    runs = [dict(r, achieved_flops=1e11) for r in base["runs"]]
    c2 = base["ceiling"]["a_w"] | {"flops_per_s": 4e11}
    assert report.summary(base | {"runs": runs, "ceiling": {"a_w": c2}})[0]["ours_of_ceiling"] == pytest.approx(0.25)
    assert "the 40% goal lies above what torch's matmul kernels reach" in text
    assert "The matmul ceiling at these shapes" in text and "32x16 (trained)" in text
    (tmp_path / "results_bf16.json").write_text(json.dumps(base))
    (tmp_path / "results_avx2.json").write_text(json.dumps(base | {"ceiling": {}, "env": {"ATEN_CPU_CAPABILITY": "avx2"}}))
    assert "| 20.0% (bf16) | 30.0% |" in report.page(tmp_path)
    assert report.summary(base | {"ceiling": {}})[0]["ceiling_mfu"] is None
