"""reports/bench/README.md from the results files in reports/bench/ (written by bench/throughput.py): one section
per CPU class (results_<tag>.json: avx2 = an AVX2-only machine emulated, fp32; bf16 = autocast on a CPU with
AVX512-BF16; results_amx.json: a Xeon with AMX), then the inference section (inference.json).

    python -m bench.report [reports/bench]

Every number comes from those files; nothing is typed in here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOAL = 1.5  # issue 7: ours / seed recipe tokens/s for LoRA on both models
MFU_GOAL = 0.40  # issue 20: ours at least 40% of the matmul peak of the dtype it computes in, LoRA, both models
SHARING_GOAL = 0.40  # issue 20: two training processes on the cores each keep 40% of their solo rate

PATH_NAMES = {
    "seed": "seed recipe: pad to max length, Trainer defaults, fp32",
    "dynamic": "+ pad to the batch's longest (random order)",
    "grouped": "+ length grouping",
    "fast_dropout": "+ our dropout masks (train.fast_dropout)",
    "ours": "+ autocast where chosen, our attention (sdpa_cpu) = lora-harness",
    "ours_1thread": "lora-harness on 1 thread instead of all",
}
OURS_BEFORE_SDPA_CPU = "+ autocast where chosen = lora-harness"
LEVER_NAMES = {
    "lora_dropout_torch": "ours + LoRA dropout 0.1, torch's dropout",
    "lora_dropout_fast": "ours + LoRA dropout 0.1, our dropout (what a 0.1 recipe runs)",
    "fused_adamw": "ours + torch's fused AdamW",
    "batch_x2": "ours with 2x batch, half the steps (same examples)",
    "compile": "ours + torch.compile (inductor, dynamic shapes)",
    "bf16_base": "ours + frozen base stored in bf16 (method.base_dtype=bf16)",
    "eager_attention": "ours + eager attention (model.attn_implementation=eager)",
    "sdpa_attention": "ours with transformers' sdpa attention, not sdpa_cpu (model.attn_implementation=null)",
}
SECTION_ORDER = ("avx2", "fp32", "bf16", "auto", "amx")


def _runs(res: dict, **match) -> list[dict]:
    return [r for r in res["runs"] if all(r.get(k) == v for k, v in match.items())]


def _one(res: dict, **match) -> dict | None:
    rows = _runs(res, **match)
    return rows[0] if rows else None


def _f(x, fmt="{:.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def summary(res: dict) -> list[dict]:
    """One row per (workload, method) with both paths: ratio, losses, noise, MFU."""
    out = []
    for wname in dict.fromkeys(r["workload"] for r in res["runs"]):
        for method in dict.fromkeys(r["method"] for r in _runs(res, workload=wname)):
            seed = _one(res, workload=wname, method=method, path="seed", seed=0)
            ours = _one(res, workload=wname, method=method, path="ours", seed=0)
            ours1 = _one(res, workload=wname, method=method, path="ours", seed=1)
            seed1 = _one(res, workload=wname, method=method, path="seed", seed=1)
            if not (seed and ours):
                continue
            gaps = [abs(a["heldout_loss_after"] - b["heldout_loss_after"]) for a, b in ((ours, ours1), (seed, seed1))
                    if b is not None]
            noise = max(gaps) if gaps else None
            diff = abs(ours["heldout_loss_after"] - seed["heldout_loss_after"])
            out.append({
                "workload": wname, "model": seed["model"], "task": seed["task"], "method": method,
                "seed_tps": seed["tokens_per_s"], "ours_tps": ours["tokens_per_s"],
                "ratio": ours["tokens_per_s"] / seed["tokens_per_s"],
                "loss_before": seed["heldout_loss_before"], "loss_seed": seed["heldout_loss_after"],
                "loss_ours": ours["heldout_loss_after"], "loss_ours_seed1": ours1["heldout_loss_after"] if ours1 else None,
                "loss_seed_seed1": seed1["heldout_loss_after"] if seed1 else None,
                "loss_diff": diff, "noise": noise,
                "within_noise": None if noise is None else diff <= max(noise, 1e-9) * 2,
                "seed_mfu": seed["mfu"], "ours_mfu": ours["mfu"],
                "seed_dtype": seed["compute_dtype"], "ours_dtype": ours["compute_dtype"],
                # the matmul ceiling at this workload's shapes (bench/throughput.py shape_ceiling), where measured
                "ceiling_mfu": ceiling(res, wname, ours["compute_dtype"]),
                # ours' FLOP/s against the ceiling's own (each MFU is against the peak measured beside it)
                "ours_of_ceiling": of_ceiling(res, wname, ours),
            })
    return out


def ceiling(res: dict, workload: str, dtype: str) -> float | None:
    """The MFU ceiling at `workload`'s shapes in `dtype` (a share of the peak measured beside it), or None."""
    c = (res.get("ceiling") or {}).get(workload)
    return c["mfu"] if c and c["dtype"] == dtype else None


def of_ceiling(res: dict, workload: str, ours: dict) -> float | None:
    """Ours' achieved FLOP/s over the ceiling's FLOP/s (not a ratio of two MFUs: their peaks were measured apart)."""
    c = (res.get("ceiling") or {}).get(workload)
    if not c or c["dtype"] != ours["compute_dtype"]:
        return None
    if ours.get("achieved_flops"):
        return ours["achieved_flops"] / c["flops_per_s"]
    return ours["mfu"] / c["mfu"]


def ceiling_line(rows: list[dict]) -> str | None:
    """The Result section's line on the matmul ceiling at the workloads' shapes, where it was measured."""
    lora = [r for r in rows if r["method"] == "lora" and r.get("ceiling_mfu")]
    if not lora:
        return None
    line = ("- The matmul ceiling at these shapes (`shape_ceiling`: every linear layer's products timed alone at the "
            "mean real tokens per step, operands already in the dtype, no attention, norms, optimizer or framework; "
            "FLOPs counted as for MFU): " + ", ".join(
                f"{r['model']} {100 * r['ceiling_mfu']:.1f}% of the {r['ours_dtype']} peak measured beside it (ours "
                f"reaches {r['ours_of_ceiling']:.0%} of the ceiling's FLOP/s)" for r in lora) + ".")
    low = [r["model"] for r in lora if r["ceiling_mfu"] < MFU_GOAL]
    if low:
        line += (f" For {' and '.join(low)} the {MFU_GOAL:.0%} goal lies above what torch's matmul kernels reach at "
                 "these shapes on this machine: no training path can meet it here, and ours against the ceiling is "
                 "the measure that remains.")
    return line


def _lora_goal(rows: list[dict], passes, describe) -> tuple[str, str]:
    """(verdict, detail) of a goal every LoRA row must pass."""
    lora = [r for r in rows if r["method"] == "lora"]
    if not lora:
        return "not resolved", "no LoRA rows"
    return ("holds" if all(passes(r) for r in lora) else "fails"), ", ".join(describe(r) for r in lora)


def goal(rows: list[dict]) -> tuple[str, str]:
    return _lora_goal(rows, lambda r: r["ratio"] >= GOAL, lambda r: f"{r['model']} {r['ratio']:.2f}x")


def mfu_goal(rows: list[dict]) -> tuple[str, str]:
    return _lora_goal(rows, lambda r: r["ours_mfu"] >= MFU_GOAL,
                      lambda r: f"{r['model']} {100 * r['ours_mfu']:.1f}% of the {r['ours_dtype']} peak")


def sharing_goal(sh: dict) -> str:
    return "holds" if all(k >= SHARING_GOAL for k in sh["kept"]) else "fails"


def cpu_class(res: dict) -> tuple[str, str]:
    """(short label, long description) of the CPU class a results file measured."""
    m = res["machine"]
    env = res.get("env") or {}
    if (env.get("ATEN_CPU_CAPABILITY") or "").lower() == "avx2":
        return "AVX2 only, fp32", "fp32 on an AVX2-only CPU (emulated: ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)"
    if res.get("compute") == "bf16":
        return "AVX512-BF16, bf16", "bf16 autocast (method.compute_dtype=bf16) on a CPU with AVX512-BF16, no AMX"
    if m.get("bf16_native") and m.get("amx", True):  # results made before machine() said: only AMX was native
        return "AMX, bf16", "native bf16 with AMX (compute auto = bf16)"
    if m.get("bf16_native"):
        return "AVX512-BF16, bf16 (auto)", "native bf16 with AVX512-BF16, no AMX (compute auto = bf16)"
    return "fp32", "fp32 (compute auto)"


def section_title(res: dict) -> str:
    m = res["machine"]
    return f"{cpu_class(res)[1]}: {m['cpu']}, {m['logical_cpus']} logical CPUs"


def _peaks(pk: dict) -> str:
    return ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in pk.items())


def render(res: dict, level: int = 1) -> str:
    """One CPU class's section (`level` 1: a page of its own, with the page title; 2: under the page's title)."""
    h = "#" * level
    m = res["machine"]
    pk = res["peak_flops"]
    pk2 = res.get("peak_flops_after") or {}
    rows = summary(res)
    verdict, detail = goal(rows)
    mverdict, mdetail = mfu_goal(rows)
    L = (["# Throughput: lora-harness against the seed recipe", ""] if level == 1 else
         [f"{h} {section_title(res)}", ""])
    L += [f"Run {res['started']} – {res.get('finished', 'unfinished')} (`make bench`"
          + (f" ARGS=\"compute={res['compute']}\"" if res.get("compute", "auto") != "auto" else "") + ").", "",
          f"{h}# Machine", "",
          f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch on {m['torch_threads']} threads; "
          f"bf16 autocast chosen by `auto` (AMX): {'yes' if m['bf16_native'] else 'no'}",
          f"- torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, bitsandbytes {m['bitsandbytes']}, "
          f"Python {m['python']}",
          f"- Dense `torch.matmul` peak measured in the same process (2048x2048, best of 3 rounds): "
          f"**{_peaks(pk)}**" + (f" (again at the end: {_peaks(pk2)})" if pk2 else ""), "",
          f"{h}# Result", "",
          f"- Goal: ours / seed recipe >= {GOAL} in real tokens/s for LoRA on both models: **{verdict}** ({detail}).",
          f"- Goal: ours at >= {MFU_GOAL:.0%} of the matmul peak of its dtype (MFU) for LoRA on both models: "
          f"**{mverdict}** ({mdetail}).", *([cl] if (cl := ceiling_line(rows)) else []), "",
         "| model | task | method | seed recipe tok/s | ours tok/s | ours / seed | held-out loss: before | seed "
         "(2nd seed) | ours (2nd seed) | MFU seed | MFU ours |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['task']} | {r['method']} | {r['seed_tps']:.0f} | {r['ours_tps']:.0f} "
                 f"| **{r['ratio']:.2f}x** | {_f(r['loss_before'], '{:.4f}')} "
                 f"| {r['loss_seed']:.4f} ({_f(r['loss_seed_seed1'], '{:.4f}')}) "
                 f"| {r['loss_ours']:.4f} ({_f(r['loss_ours_seed1'], '{:.4f}')}) "
                 f"| {100 * r['seed_mfu']:.1f}% ({r['seed_dtype']}) | {100 * r['ours_mfu']:.1f}% ({r['ours_dtype']}) |")
    L += ["", "Loss: the mean loss on the same held-out examples after training (fp32, no dropout). "
          "In brackets: the same path again with train.seed=1 (another LoRA initialisation and data order). "
          "The larger of the two paths' seed-to-seed gaps is the noise the seed-vs-ours gap is judged against.", ""]
    for r in rows:
        if r["noise"] is None:
            continue
        L.append(f"- {r['model']} {r['method']}: |seed recipe - ours| = {r['loss_diff']:.4f}, noise = "
                 f"{r['noise']:.4f} (largest seed-to-seed gap) -> {'within noise' if r['within_noise'] else 'LARGER than the seed-to-seed gap'}"
                 " (criterion: at most twice the seed-to-seed gap).")
    L += ["", f"{h}# Where the speed comes from (LoRA)", "",
          "Each row adds one change to the one above (then: ours on fewer threads), same model, data, steps and "
          "seed. In bold, the levers: each one change to ours, measured and kept in the harness only if it "
          "helps without changing the maths beyond noise. Train wall: the whole training call (compile and the "
          "warm-up steps included); tokens/s and MFU: the steps after the warm-up.", "",
          "| model | path | compute | threads | real tokens/s | x seed | x ours | median step (s) | train wall (s) "
          "| held-out loss | MFU |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for wname in dict.fromkeys(r["workload"] for r in res["runs"]):
        seed = _one(res, workload=wname, method="lora", path="seed", seed=0)
        ours = _one(res, workload=wname, method="lora", path="ours", seed=0)
        for path, name in (PATH_NAMES | LEVER_NAMES).items():
            r = _one(res, workload=wname, method="lora", path=path, seed=0)
            if r is None:
                continue
            x = f"{r['tokens_per_s'] / seed['tokens_per_s']:.2f}" if seed else "–"
            xo = f"{r['tokens_per_s'] / ours['tokens_per_s']:.2f}" if ours else "–"
            wall = _f(r.get("train_wall_s"), "{:.1f}")
            if path == "ours" and r.get("attn_implementation") != "sdpa_cpu":  # a section run before sdpa_cpu
                name = OURS_BEFORE_SDPA_CPU
            L.append(f"| {r['model']} | {'**' + name + '**' if path in LEVER_NAMES else name} | {r['compute_dtype']} "
                     f"| {r.get('threads', '–')} | {r['tokens_per_s']:.0f} | {x} | {xo} "
                     f"| {r['step_s_median']:.2f} | {wall} | {r['heldout_loss_after']:.4f} | {100 * r['mfu']:.1f}% |")
    same = []
    for wname in dict.fromkeys(r["workload"] for r in res["runs"]):
        a = _one(res, workload=wname, method="lora", path="seed", seed=0)
        b = _one(res, workload=wname, method="lora", path="dynamic", seed=0)
        if a and b:
            d = abs(a["heldout_loss_after"] - b["heldout_loss_after"])
            same.append(f"{a['model']} {a['heldout_loss_after']:.4f} vs {b['heldout_loss_after']:.4f} "
                        + ("(identical)" if d < 5e-4 else "(different)"))
    if same:
        L += ["", "The first two rows see the same batches in the same order (random sampler, same seed) with the same "
              "optimizer settings and differ only in padding. Held-out losses after training: " + "; ".join(same)
              + ". Identical means padding changed no maths; where they differ, the model has dropout, whose "
              "random masks are drawn over the padded tensor, so other padding draws other masks. Length grouping "
              "and bf16 change the batch order and the rounding; the seed-to-seed gaps above are the yardstick."]
    for f in res.get("failed") or ():
        L.append(f"\n{f['workload']} {f['method']} {f['path']} (seed {f['seed']}) failed: `{f['error']}`")
    prof = [r for r in res["runs"] if r.get("op_profile")]
    if prof:
        L += ["", f"{h}# Where a step's time goes", "",
              "ours (seed 0), a separate pass under `torch.profiler` over steps 3-6: the share of the CPU time per "
              "kind of op (self time). A 4-bit base dequantizes every weight in each forward and again in each "
              "backward on the CPU; caching a dequantized copy for a step would remove that share and hold the "
              "weights at their 16/32-bit size again, the memory a 4-bit base exists to save (the LoRA row of the "
              "same model is that path: its speed and its weight memory are the ceiling of such a cache).", "",
              "| model | method | compute | matmuls | 4-bit dequantize | dropout's random draws | other | "
              "profiled step (s) |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in prof:
            o = r["op_profile"]
            L.append(f"| {r['model']} | {r['method']} | {r['compute_dtype']} | {100 * o['matmul']:.0f}% "
                     f"| {100 * o['dequantize']:.0f}% | {100 * o['random draws']:.0f}% | {100 * o['other']:.0f}% "
                     f"| {o['wall_s'] / o['steps']:.2f} |")
    sh = res.get("sharing")
    if sh:
        kept = sh["kept"]
        L += ["", f"{h}# Sharing the cores", "",
              f"The default run (`make run`'s config, all threads, {sh['steps']} steps) alone in a fresh process: "
              f"**{sh['solo_tokens_per_s']:.0f}** training tokens/s; two such runs at once: "
              + " and ".join(f"**{x:.0f}**" for x in sh["pair_tokens_per_s"])
              + f" ({', '.join(f'{100 * k:.0f}%' for k in kept)} of solo; together "
              f"{sum(sh['pair_tokens_per_s']) / sh['solo_tokens_per_s']:.2f}x one run alone). OpenMP wait settings "
              f"each run started with: {', '.join(f'{k}={v}' for k, v in sh['env'].items())}. "
              f"Goal: each keeps >= {SHARING_GOAL:.0%} of its solo rate: **{sharing_goal(sh)}**."]
    L += ["", f"{h}# Settings and FLOP count", ""]
    for wname, w in res["workloads"].items():
        r = _one(res, workload=w["name"], method="lora", seed=0) or _one(res, workload=w["name"])
        if r is None:
            continue
        fl = r["flops"]
        L.append(f"- **{w['name']}**: {w['model']} on {w['task']}, batch {w['batch_size']}, max length "
                 f"{w['max_seq_len']} (the seed recipe pads every example to it), {w['steps']} steps "
                 f"(rates over the last {w['steps'] - res['warmup_steps']}), lr {w['lr']}, "
                 f"{r['real_tokens']} real tokens in all ({r['real_tokens'] / (w['batch_size'] * w['steps']):.1f} per "
                 f"example; the seed recipe computes {w['max_seq_len']}). LoRA r=8, alpha=16, Wq,Wv, dropout 0. "
                 f"Training FLOPs per real token: {fl['per_token'] / 1e6:.1f} M = 4 x {fl['frozen_linear'] / 1e6:.2f} M "
                 f"frozen + 6 x {fl['trained_linear'] / 1e6:.3f} M trained linear weights.")
    L += ["", "MFU = FLOPs per real token x real tokens/s / the measured matmul peak in the dtype the frozen "
          "weights' matmuls run in (fp32 without autocast; bf16 under autocast and for bitsandbytes' bf16 compute). "
          "Full fine-tuning would count 6N. Attention-score products, norms and elementwise work are not counted, "
          "and pad tokens count as waste, so MFU is useful work only. Every row, the 1-thread one too, is measured "
          "against the all-thread peak: the share of this machine it uses.", ""]
    ceil = res.get("ceiling") or {}
    if ceil:
        L += [f"{h}# The matmul ceiling at these shapes", "",
              "bench/throughput.py `shape_ceiling` (`make bench ARGS=\"ceiling_only=true ...\"` measures it alone): "
              "each distinct linear layer's products as a training step runs them (forward X W^T, input gradient "
              "G W, and G^T X for a trained weight), timed alone with the mean real tokens per step as rows (packed, "
              "no padding), operands already in the compute dtype (no autocast casts), best of 3 rounds; the FLOPs "
              "MFU counts over their summed time. No training path can beat it with these kernels: what separates "
              "ours from it is attention, norms, activations, casts, the optimizer and the framework.", "",
              "| workload | rows (tokens per step) | dtype | ceiling GFLOP/s | peak beside it | ceiling MFU "
              "| per shape (in x out: GFLOP/s) | measured |", "|---|---:|---|---:|---:|---:|---|---|"]
        for wname, c in ceil.items():
            shapes = ", ".join(f"{x['in']}x{x['out']}{' (trained)' if x['trained'] else ''}: "
                               f"{x['flops_per_s'] / 1e9:.0f}" for x in c["shapes"])
            L.append(f"| {wname} | {c['tokens']} | {c['dtype']} | {c['flops_per_s'] / 1e9:.0f} "
                     f"| {c['peak'] / 1e9:.0f} | **{100 * c['mfu']:.1f}%** | {shapes} | {c.get('measured', '–')} |")
        L.append("")
    fc = res.get("fixed_cost") or {}
    if fc:
        L += [f"{h}# Per-run fixed cost", "",
              "One `python -m harness.run` with 1 training step in a fresh process, converted model already cached.",
              "", "| workload | process start + config | imports | data (read + tokenize) | model load | 1 step "
              "| final eval | fixed (all but train and eval) | wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for wname, c in fc.items():
            L.append(f"| {wname} | {c['process_start_and_config_s']:.1f} s | {c['imports_s']:.1f} s | {c['data_s']:.1f} s "
                     f"| {c['load_s']:.1f} s | {c['train_s']:.1f} s | {c['final_eval_s']:.1f} s | **{c['fixed_s']:.1f} s** "
                     f"| {c['wall_s']:.1f} s |")
        L.append("")
    L += [f"{h}# How it is measured", "",
          "- Both paths in one process, one after the other, each on a freshly built model "
          "(`harness.runner.build_model`, same seed: same weights and LoRA initialisation) and the same training "
          "examples and token ids. The seed recipe tokenizes with `padding=\"max_length\"` and trains with "
          "`DataCollatorForLanguageModeling(mlm=False)` (causal LM) or `default_data_collator` (classification, "
          "as run_glue.py with pad_to_max_length) under a `Trainer` with default arguments; ours is "
          "`harness.train.make_trainer`, what every `python -m harness.run` trains with.",
          "- The objective is the same maths on both paths: causal LM, the next-token loss on every real token "
          "(what DataCollatorForLanguageModeling trains; our runs mask the prompt, the bench does not); "
          "classification, the head's loss. tests/test_bench.py checks that both paths' collated batches give the "
          "same loss on the same examples.",
          f"- Tokens/s: real (non-pad, attention-mask) tokens of the steps after the first {res['warmup_steps']}, "
          "divided by the wall time from the end of step "
          f"{res['warmup_steps']} to the end of the last step (data loading, forward, backward, optimizer, logging).",
          "- One run per path: timings on a shared 2-core VM move by several percent between runs.", ""]
    return "\n".join(L)


VARIANT_NAMES = {
    "base": "base model, no adapter",
    "lora": "LoRA unmerged (W x + s B A x)",
    "lora_merged": "LoRA merged into W",
    "qlora": "4-bit NF4 base + LoRA unmerged",
    "qlora_merged": "LoRA merged into a dequantized copy",
}


def _ratio(r: dict) -> str:
    return f"{r['median']:.2f} [{r['lo90']:.2f}, {r['hi90']:.2f}]"


def render_inference(inf: dict) -> str:
    """The inference section (bench/inference.py's inference.json)."""
    m = inf["machine"]
    emu = {k: v for k, v in (inf.get("env") or {}).items() if v and k != "OMP_WAIT_POLICY"}
    tol = inf["tolerance"]
    L = ["## Inference: does an adapter add latency? (LoRA Table 1's question)", "",
         f"Made by `make bench-inference` (bench/inference.py) from `inference.json`, {inf['started']} – "
         f"{inf['finished']}. CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch on {m['torch_threads']} "
         f"threads, native bf16: {'yes' if m['bf16_native'] else 'no'}"
         + (f" ({', '.join(f'{k}={v}' for k, v in emu.items())}: an AVX2-only machine emulated)" if emu else "")
         + f"; torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, bitsandbytes "
         f"{m['bitsandbytes']}.", "",
         f"Every variant is built from the same weights and the same adapter (LoRA on Wq,Wv, r=8, B set to small "
         f"random values so that the adapter changes the outputs). Forward: real texts of the task padded to the "
         f"batch's longest (at most {inf['max_len']} tokens), {inf['rounds']} timed calls per variant taken "
         f"round-robin; generation: greedy, exactly {inf['gen_tokens']} new tokens, {inf['gen_rounds']} rounds. "
         "Median [interquartile range]; ratios: the median over rounds of the per-round ratio to the base, with "
         "a bootstrap 90% interval.", ""]
    for key, r in inf["models"].items():
        gen = bool(r.get("generate"))
        L += [f"### {r['model']} ({r['task']}; compute {r['compute_dtype']}, the 4-bit base computes in "
              f"{r['qlora_compute_dtype']})", ""]
        head = ["variant", "forward b1 (ms)", "forward b8 (ms)", "b1 / base", "b8 / base"]
        if gen:
            head += ["generate b1 (tok/s)", "generate b8 (tok/s)"]
        L += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for v, name in VARIANT_NAMES.items():
            cells = [name]
            for b in ("b1", "b8"):
                st = r["forward"][b]["variants"][v]
                cells.append(f"{1e3 * st['median_s']:.1f} [{1e3 * st['q1_s']:.1f}–{1e3 * st['q3_s']:.1f}]")
            for b in ("b1", "b8"):
                cells.append("1.00" if v == "base" else _ratio(r["forward"][b][f"{v}_over_base"]))
            if gen:
                for b in ("b1", "b8"):
                    cells.append(f"{r['generate'][b]['variants'][v]['tokens_per_s']:.1f}")
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
        verdicts = []
        for b in ("b1", "b8"):
            x = r["forward"][b]["lora_merged_over_base"]
            verdicts.append(f"forward {b} {_ratio(x)}: "
                            + ("equal within noise" if x["within_tolerance"] else f"not resolved at ±{tol:.0%} (its interval reaches past it: more rounds would narrow it)"))
            if gen:
                g = r["generate"][b]["lora_merged_over_base"]
                verdicts.append(f"generate {b} {_ratio(g)}: "
                                + ("equal within noise" if g["within_tolerance"] else f"not resolved at ±{tol:.0%} (its interval reaches past it: more rounds would narrow it)"))
        d = r["max_abs_diff"]
        L += [f"- Merged LoRA vs the base model (the paper: no added latency; equal = the ratio's 90% interval inside "
              f"1 ± {tol:.2f}): " + "; ".join(verdicts) + ".",
              f"- Outputs: merged vs unmerged LoRA differ by at most {max(x['lora_merged_vs_lora'] for x in d.values()):.1e}, "
              f"merged-into-dequantized vs 4-bit unmerged by {max(x['qlora_merged_vs_qlora'] for x in d.values()):.1e} "
              f"(the adapter itself moves them by {max(x['lora_vs_base'] for x in d.values()):.2f}); "
              f"{r['qlora_dequantized_layers']} 4-bit layers dequantized.", ""]
    return "\n".join(L)


def sections(folder: Path) -> list[dict]:
    """The results files in `folder`, in SECTION_ORDER (results_<tag>.json; results.json counts as tag "")."""
    found = {}
    for f in sorted(folder.glob("results*.json")):
        tag = f.stem[len("results_"):] if f.stem.startswith("results_") else ""
        found[tag] = json.loads(f.read_text())
    order = [t for t in SECTION_ORDER if t in found] + [t for t in found if t not in SECTION_ORDER]
    return [found[t] for t in order]


def overview(secs: list[dict]) -> list[str]:
    L = ["| CPU class | model | method | seed recipe tok/s | ours tok/s | ours / seed | MFU ours "
         "| matmul ceiling at these shapes |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for res in secs:
        for r in summary(res):
            c = r.get("ceiling_mfu")
            L.append(f"| {cpu_class(res)[0]} | {r['model']} | {r['method']} | {r['seed_tps']:.0f} "
                     f"| {r['ours_tps']:.0f} | {r['ratio']:.2f}x | {100 * r['ours_mfu']:.1f}% ({r['ours_dtype']}) "
                     f"| {'–' if c is None else f'{100 * c:.1f}%'} |")
    return L


# issue 20's goals for the everyday commands on a 2-core AVX2-only CPU (seconds)
COMMAND_GOALS = {"run": 300, "sweep": 900, "test": 480}
COMMAND_LABELS = {"avx2": "AVX2 only, fp32", "bf16": "AVX512-BF16 or AMX, bf16 (auto)", "fp32": "fp32 (auto)"}


def commands(folder: Path) -> dict[str, dict]:
    """{tag: bench.commands' results} from commands_<tag>.json in `folder`, AVX2 first."""
    found = {f.stem[len("commands_"):]: json.loads(f.read_text()) for f in sorted(folder.glob("commands_*.json"))}
    return {t: found[t] for t in sorted(found, key=lambda t: (t != "avx2", t))}


def command_goals(tag: str, res: dict) -> dict[str, str]:
    """{command: holds / fails} against COMMAND_GOALS: on the AVX2-only class, which the goals are for."""
    if tag != "avx2":
        return {}
    out = {}
    for name, limit in COMMAND_GOALS.items():
        c = res["commands"].get(name)
        if c:
            out[name] = "holds" if c["rc"] == 0 and c["wall_s"] <= limit else "fails"
    return out


def _clock(s: float) -> str:
    s = round(s)
    return f"{s:,} s ({s // 60} min {s % 60:02d} s)"


def commands_section(cmds: dict[str, dict], level: int = 2) -> list[str]:
    if not cmds:
        return []
    L = ["#" * level + " Wall time of the everyday commands", "",
         "`make bench-commands` (bench/commands.py) times `make run`, `make sweep` (the default grid and its baselines, "
         "then its report) and `make test` as a user runs them, with the run's and the sweep's outputs in a temporary "
         f"folder. Goals on a 2-core AVX2-only CPU: make run within {COMMAND_GOALS['run'] // 60} minutes, make sweep "
         f"within {COMMAND_GOALS['sweep'] // 60}, make test within {COMMAND_GOALS['test'] // 60}.", "",
         "| CPU class | CPU | make run | make sweep | make test | measured | code |", "|---|---|---:|---:|---:|---|---|"]
    for tag, res in cmds.items():
        goals = command_goals(tag, res)
        cells = []
        for name in ("run", "sweep", "test"):
            c = res["commands"].get(name)
            if not c:
                cells.append("–")
                continue
            what = ""
            if name == "run" and c.get("value") is not None:
                what = f"; {c['metric']} {100 * c['value']:.1f}, {c.get('compute_dtype')}" if c["value"] <= 1 else \
                    f"; {c['metric']} {c['value']:.3f}"
            elif name == "sweep" and "records" in c:
                what = f"; {c['ok']} of {c['records']} runs ok"
            elif name == "test" and c.get("pytest"):
                what = f"; {c['pytest']}"
            cells.append(_clock(c["wall_s"]) + (f" **{goals[name]}**" if name in goals else "")
                         + ("" if c["rc"] == 0 else f" (exit {c['rc']})") + what)
        m = res["machine"]
        lim = ", ".join(f"{k}={v}" for k, v in (res.get("env") or {}).items() if k.startswith(("ATEN", "ONEDNN")) and v)
        L.append(f"| {COMMAND_LABELS.get(tag, tag)} | {m['cpu']}, {m['logical_cpus']} logical CPUs"
                 f"{f' ({lim})' if lim else ''} | {' | '.join(cells)} | {res['started'][:10]} | {res.get('git')} |")
    return L + [""]


def page(folder: Path) -> str:
    secs = sections(folder)
    cmds = commands_section(commands(folder))
    if len(secs) == 1:
        text = render(secs[0]) + ("\n" + "\n".join(cmds) if cmds else "")
    elif secs:
        text = "\n".join(["# Throughput: lora-harness against the seed recipe", "",
                          "Made by `make bench` (bench/throughput.py; this page by bench/report.py from the "
                          "`results_*.json` and `commands_*.json` beside it), one section per CPU class.", "",
                          *overview(secs), "", *cmds]
                         + [render(r, level=2) for r in secs])
    else:
        text = "\n".join(["# Benchmarks", "", *cmds])
    inf = folder / "inference.json"
    if inf.is_file():
        text = text.rstrip("\n") + "\n\n" + render_inference(json.loads(inf.read_text()))
    return text


def machine_summary(folder: Path) -> dict:
    """reports/bench/summary.json: per CPU class, the goals' verdicts with their numbers and the ours-vs-seed rows
    (what README.md's overview and Result lines say, for tools)."""
    out = []
    for res in sections(folder):
        rows = summary(res)
        sh = res.get("sharing")
        goals = {"ours_over_seed": dict(zip(("verdict", "detail"), goal(rows)), threshold=GOAL),
                 "mfu": dict(zip(("verdict", "detail"), mfu_goal(rows)), threshold=MFU_GOAL)}
        if sh:
            goals["sharing"] = {"verdict": sharing_goal(sh),
                                "kept": sh["kept"], "threshold": SHARING_GOAL}
        out.append({"cpu_class": cpu_class(res)[0], "title": section_title(res), "started": res["started"],
                    "finished": res.get("finished"), "peak_flops": res["peak_flops"], "goals": goals,
                    "rows": rows})
    cmds = {tag: {"commands": res["commands"], "goals": command_goals(tag, res), "started": res["started"],
                  "machine": res["machine"], "env": res.get("env"), "git": res.get("git")}
            for tag, res in commands(folder).items()}
    return {"source": "bench/report.py from reports/bench/results_*.json and commands_*.json", "sections": out,
            "commands": cmds}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "reports" / "bench"
    folder = folder.parent if folder.is_file() else folder
    (folder / "README.md").write_text(page(folder))
    (folder / "summary.json").write_text(json.dumps(machine_summary(folder), indent=1, default=float) + "\n")
    print(folder / "README.md")


if __name__ == "__main__":
    main()
