"""reports/bench/README.md from reports/bench/results.json (written by bench/throughput.py).

    python -m bench.report [reports/bench/results.json]

Every number comes from results.json; nothing is typed in here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOAL = 1.5  # issue 7: ours / seed recipe tokens/s for LoRA on both models

PATH_NAMES = {
    "seed": "seed recipe: pad to max length, Trainer defaults, fp32",
    "dynamic": "+ pad to the batch's longest (random order)",
    "grouped": "+ length grouping",
    "ours": "+ bf16 autocast = lora-harness",
    "ours_1thread": "lora-harness on 1 thread instead of all",
}


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
            })
    return out


def goal(rows: list[dict]) -> tuple[str, str]:
    lora = [r for r in rows if r["method"] == "lora"]
    if not lora:
        return "not resolved", "no LoRA rows"
    ok = all(r["ratio"] >= GOAL for r in lora)
    detail = ", ".join(f"{r['model']} {r['ratio']:.2f}x" for r in lora)
    return ("holds" if ok else "fails"), detail


def render(res: dict) -> str:
    m = res["machine"]
    pk = res["peak_flops"]
    pk2 = res.get("peak_flops_after") or {}
    rows = summary(res)
    verdict, detail = goal(rows)
    L = ["# Throughput: lora-harness against the seed recipe", "",
         "Made by `make bench` (bench/throughput.py; this page by bench/report.py from `results.json`). "
         f"Run {res['started']} – {res.get('finished', 'unfinished')}.", "",
         "## Machine", "",
         f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch on {m['torch_threads']} threads; "
         f"native bf16 (AVX512-BF16/AMX): {'yes' if m['bf16_native'] else 'no'}",
         f"- torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, bitsandbytes {m['bitsandbytes']}, "
         f"Python {m['python']}",
         f"- Dense `torch.matmul` peak measured in the same process (2048x2048, best of 3 rounds): "
         f"**fp32 {pk['fp32'] / 1e9:.0f} GFLOP/s, bf16 {pk['bf16'] / 1e9:.0f} GFLOP/s**"
         + (f" (again at the end: fp32 {pk2['fp32'] / 1e9:.0f}, bf16 {pk2['bf16'] / 1e9:.0f})" if pk2 else ""), "",
         "## Result", "",
         f"Goal: ours / seed recipe >= {GOAL} in real tokens/s for LoRA on both models: **{verdict}** ({detail}).", "",
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
    L += ["", "## Where the speed comes from (LoRA)", "",
          "Each row adds one change to the one above (the last: the same as ours on fewer threads), same model, "
          "data, steps and seed.", "",
          "| model | path | compute | threads | real tokens/s | x seed | median step (s) | held-out loss | MFU |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for wname in dict.fromkeys(r["workload"] for r in res["runs"]):
        seed = _one(res, workload=wname, method="lora", path="seed", seed=0)
        for path in PATH_NAMES:
            r = _one(res, workload=wname, method="lora", path=path, seed=0)
            if r is None:
                continue
            x = f"{r['tokens_per_s'] / seed['tokens_per_s']:.2f}" if seed else "–"
            L.append(f"| {r['model']} | {PATH_NAMES[path]} | {r['compute_dtype']} | {r.get('threads', '–')} "
                     f"| {r['tokens_per_s']:.0f} | {x} "
                     f"| {r['step_s_median']:.2f} | {r['heldout_loss_after']:.4f} | {100 * r['mfu']:.1f}% |")
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
    L += ["", "## Settings and FLOP count", ""]
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
    fc = res.get("fixed_cost") or {}
    if fc:
        L += ["## Per-run fixed cost", "",
              "One `python -m harness.run` with 1 training step in a fresh process, converted model already cached.",
              "", "| workload | process start + config | imports | data (read + tokenize) | model load | 1 step "
              "| final eval | fixed (all but train and eval) | wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for wname, c in fc.items():
            L.append(f"| {wname} | {c['process_start_and_config_s']:.1f} s | {c['imports_s']:.1f} s | {c['data_s']:.1f} s "
                     f"| {c['load_s']:.1f} s | {c['train_s']:.1f} s | {c['final_eval_s']:.1f} s | **{c['fixed_s']:.1f} s** "
                     f"| {c['wall_s']:.1f} s |")
        L.append("")
    L += ["## How it is measured", "",
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


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "reports" / "bench" / "results.json"
    text = render(json.loads(path.read_text())) if path.is_file() else "# Benchmarks\n"
    inf = path.parent / "inference.json"
    if inf.is_file():
        text = text.rstrip("\n") + "\n\n" + render_inference(json.loads(inf.read_text()))
    (path.parent / "README.md").write_text(text)
    print(path.parent / "README.md")


if __name__ == "__main__":
    main()
