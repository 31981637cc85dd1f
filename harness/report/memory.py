"""reports/memory/README.md: the memory planner (harness/plan.py) against measured training peaks (records of the
memory_* experiments), against the bytes the loaded weights hold, against the papers' memory figures (recomputed
from first principles, arithmetic shown), and beside what peers publish.

    python -m harness.report.memory [root=outputs] [out=reports]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.cli import key_value_args
from harness.report import frame, tables

EXPERIMENTS = ("memory_minilm", "memory_smollm2")
TOLERANCE = 0.15
GB, GIB, MIB = 1e9, 1024**3, 1024**2


def _latest(store, name: str) -> list[dict]:
    recs = [r for r in store.records(name) if r.get("status") == "ok"]
    chosen, _ = frame.latest_per_config(recs) if recs else ([], [])
    return chosen


def _plan_mb(rec: dict) -> dict:
    """The current planner's prediction for a recorded run (recomputed from its config and longest batch, so the
    table follows the planner; the record's own memory.plan is what the planner said when it ran)."""
    from harness.plan import plan_for_record

    p = plan_for_record(rec)
    return {"total_mb": p.total / MIB, "parts_mb": {k: v / MIB for k, v in p.parts.items()}, "setting": p.setting}


def measured_section(store) -> tuple[list[str], dict]:
    """(markdown lines, stats): stats counts the plans within TOLERANCE and the exact weight counts, and holds
    every row as numbers ("rows", "weight_rows") for summary.json."""
    prows, wprows = [], []  # one dict per row, as summary.json holds them; the tables are formatted from these
    for name in EXPERIMENTS:
        for r in sorted(_latest(store, name), key=lambda r: (r["config"]["method"]["name"],
                                                             r["config"]["train"]["batch_size"])):
            if not (r.get("throughput") or {}).get("longest_batch"):
                continue  # recorded before runs kept their longest batch
            p = _plan_mb(r)
            meas = (r.get("memory") or {}).get("peak_mb")
            if not p or "total_mb" not in p or not meas:
                continue
            ratio = p["total_mb"] / meas
            lb, pm = p["setting"], p["parts_mb"]
            bd = (r.get("memory") or {}).get("breakdown")
            model, method = r["config"]["model"]["name"], r["config"]["method"]["name"]
            prows.append({
                "model": model, "method": method, "batch_size": lb["batch_size"], "tokens": lb["max_seq_len"],
                "measured_mb": meas, "planned_mb": p["total_mb"], "planned_over_measured": ratio,
                "within_tolerance": bool(abs(ratio - 1) <= TOLERANCE),
                "measured_parts_mb": None if not bd else {
                    "weights": bd["weights_mb"], "gradients": bd["gradients_mb"],
                    "optimizer_state": bd["optimizer_state_mb"], "rest": bd.get("activations_and_other_mb", 0)},
                "planned_parts_mb": {
                    "weights": sum(v for k, v in pm.items() if k.startswith(("base weights", "trainable"))),
                    "gradients": pm.get("gradients", 0), "optimizer_state": pm.get("optimizer state", 0),
                    "rest": pm.get("activations", 0) + pm.get("loss buffers", 0)
                    + pm.get("autocast weight copies", 0) + pm.get("framework working memory (CPU)", 0)},
                "record": r.get("run_id"), "config_hash": r.get("config_hash")})
            # weights: what the loaded model holds (methods.linear_storage, in the record) vs the plan
            ls = (r.get("model") or {}).get("linear_storage") or {}
            q = pm.get("base weights: quantized linear layers")
            if q is not None and ls:
                planned = round((q + pm.get("base weights: quantization constants", 0)) * MIB)
                held = ls["weight_bytes"] + ls["constant_bytes"]
                wprows.append({"model": model, "method": method, "held_bytes": held, "planned_bytes": planned,
                               "equal": planned == held, "bits_per_param": ls["bits_per_param"]})
    stats = {"n": len(prows), "within": sum(x["within_tolerance"] for x in prows),
             "weights_exact": sum(x["equal"] for x in wprows), "weights_n": len(wprows), "tolerance": TOLERANCE,
             "rows": prows, "weight_rows": wprows}

    def parts(d):
        return "-" if d is None else " / ".join(f"{d[k]:,.0f}" for k in ("weights", "gradients", "optimizer_state",
                                                                        "rest"))

    rows = [[x["model"], x["method"], f"{x['batch_size']} x {x['tokens']}", f"{x['measured_mb']:,.0f}",
             f"{x['planned_mb']:,.0f}", f"{x['planned_over_measured']:.2f}",
             "yes" if x["within_tolerance"] else "**no**", parts(x["measured_parts_mb"]), parts(x["planned_parts_mb"])]
            for x in prows]
    wrows = [[x["model"], x["method"], f"{x['held_bytes']:,}", f"{x['planned_bytes']:,}",
              "yes" if x["equal"] else "**no**", f"{x['bits_per_param']:.3f}"] for x in wprows]
    L = ["## The planner against measured training peaks (this machine)", ""]
    if not rows:
        return L + ["No records of the memory experiments yet: `make sweep EXPERIMENT=memory_minilm` and "
                    "`make sweep EXPERIMENT=memory_smollm2`.", ""], stats
    L += [f"Each run (`make sweep EXPERIMENT=memory_minilm`, `EXPERIMENT=memory_smollm2`) trains 4 steps with every "
          "sequence truncated to the same length, records its measured training peak (CPU: the process's resident "
          "high-water mark over its baseline before the model loaded, `/proc/self/status` VmHWM reset after "
          "loading) and the planner's prediction for its longest batch (`memory.plan` in the record). "
          f"**{stats['within']} of {stats['n']}** predictions are within {TOLERANCE:.0%} of the measurement.", "",
          "The last two columns split the peak: weights / gradients / optimizer state / the rest (activations, "
          "temporaries, allocator). Measured: the bytes of the tensors each category holds before the second optimizer "
          "step (`memory.breakdown`), the rest = measured peak minus those; planned: the planner's parts (the rest = "
          "activations + autocast weight copies + loss buffers + the CPU framework's working memory). The planned "
          "peak is not their sum: it is the larger of the start of the backward pass (activations and loss buffers "
          "alive, gradients still to come) and the optimizer step (gradients and AdamW's temporaries, activations "
          "freed).", "",
          tables.md_table(["Model", "Method", "Batch x tokens", "Measured MiB", "Planned MiB", "Planned / measured",
                           f"Within {TOLERANCE:.0%}", "Measured W / G / O / rest", "Planned W / G / O / rest"], rows,
                          ["l", "l", "r", "r", "r", "r", "l", "r", "r"]), ""]
    if wrows:
        L += ["### Weights: planned bytes = bytes held after loading", "",
              "Quantized linear layers (packed weights + quantization constants, code books included) as the "
              "planner computes them from the shape alone, against the tensors the loaded model holds "
              f"(`methods.linear_storage`): **{stats['weights_exact']} of {stats['weights_n']} exact**.", "",
              tables.md_table(["Model", "Method", "Held (bytes)", "Planned (bytes)", "Equal", "Bits per weight"],
                              wrows, ["l", "l", "r", "r", "l", "r"]), ""]
    return L, stats


def _figure(figs: list, what: str, source: str, paper: str, ours: float, unit: str, verdict: str | None,
            command: str) -> None:
    figs.append({"figure": what, "source": source, "paper": paper, "ours": ours, "unit": unit, "verdict": verdict,
                 "command": command})


def paper_section() -> tuple[list[str], list[dict]]:
    """(markdown lines, the figures as numbers: paper's value, ours, verdict where the paper states a bound)."""
    from harness.plan import make_plan

    figs: list[dict] = []

    L = ["## The papers' memory figures, from first principles", "",
         "Each figure recomputed by the planner from the model's shape (`python -m harness.plan ...`, the command "
         "is given), with the arithmetic.", ""]
    # 1. double quantization
    nf4 = make_plan(["model=llama_65b", "method=qlora_nf4", "method.base_dtype=bf16"])
    dq = make_plan(["model=llama_65b", "method=qlora_nf4_dq", "method.base_dtype=bf16"])
    nq = nf4.params["quantized_linear"]
    c1, c2 = nf4.parts["base weights: quantization constants"], dq.parts["base weights: quantization constants"]
    L += ["### Double quantization saves 0.373 bits per parameter, about 3 GB on LLaMA-65B", "",
          "Per weight: NF4 keeps one fp32 absmax per block of 64: 32/64 = 0.500 bits. DQ stores those absmax in 8 bits "
          "with one fp32 constant per 256 blocks: 8/64 + 32/(64 x 256) = 0.127 bits. Saved: 0.373 bits per weight.",
          "",
          f"LLaMA-65B's quantized linear layers hold {nq:,} weights: constants {c1 / GB:.2f} GB (NF4) vs "
          f"{c2 / GB:.2f} GB (NF4+DQ), **{(c1 - c2) / GB:.2f} GB saved** ({8 * (c1 - c2) / nq:.3f} bits per weight; "
          "the paper: about 3 GB). `python -m harness.plan model=llama_65b method=qlora_nf4_dq`", ""]
    _figure(figs, "double quantization saving on LLaMA-65B", "QLoRA section 3 (Double Quantization)",
            "0.373 bits per parameter, about 3 GB", (c1 - c2) / GB, "GB", None,
            "python -m harness.plan model=llama_65b method=qlora_nf4_dq")
    # 2. full 16-bit fine-tuning
    full = make_plan(["model=llama_65b", "method=full", "method.base_dtype=bf16", "train.batch_size=1",
                      "train.max_seq_len=512", "train.gradient_checkpointing=true"])
    n = full.params["total"]
    states = sum(v for k, v in full.parts.items() if k.startswith("base weights") or k in ("gradients",
                                                                                           "optimizer state"))
    L += ["### 16-bit full fine-tuning of LLaMA-65B needs more than 780 GB", "",
          f"{n:,} parameters x (2 bytes of bf16 weights + 2 of gradients + 8 of AdamW's two fp32 states) = "
          f"**{states / GB:,.0f} GB** before any activation (the paper: more than 780 GB); with batch 1 x 512 tokens "
          f"and gradient checkpointing the planned peak is {full.total / GB:,.0f} GB (at the optimizer step, torch's "
          f"foreach AdamW adds one fp32 temporary per parameter). Mixed precision with fp32 master weights would add "
          f"4 bytes per parameter more ({4 * n / GB:,.0f} GB). "
          "`python -m harness.plan model=llama_65b method=full method.base_dtype=bf16 train.batch_size=1 "
          "train.max_seq_len=512 train.gradient_checkpointing=true`", ""]
    _figure(figs, "16-bit full fine-tuning of LLaMA-65B: weights, gradients and AdamW state",
            "QLoRA section 1 (Introduction)", "more than 780 GB", states / GB, "GB",
            "holds" if states > 780 * GB else "fails",
            "python -m harness.plan model=llama_65b method=full method.base_dtype=bf16")
    # 3. QLoRA 65B under 48 GB
    q = make_plan(["model=llama_65b", "method=qlora_nf4_dq", "method.base_dtype=bf16", "lora.r=64",
                   "lora.targets=all_linear", "train.optimizer=paged_adamw", "train.batch_size=1",
                   "train.max_seq_len=512", "train.gradient_checkpointing=true"], lora_dtype="bf16")
    rows = [[k, f"{v / GB:.2f}"] for k, v in q.parts.items()]
    L += ["### QLoRA fine-tuning of LLaMA-65B fits under 48 GB", "",
          "The paper's recipe: NF4+DQ base, bf16 embeddings/norms/head, LoRA r=64 on all linear layers in bf16, paged "
          "AdamW, gradient checkpointing; batch 1 x 512 tokens:", "",
          tables.md_table(["Part", "GB"], rows + [["**total**", f"**{q.total / GB:.2f}**"],
                                                  ["on the GPU (paged optimizer state can leave)",
                                                   f"{q.resident / GB:.2f}"]], ["l", "r"]), "",
          f"**{q.total / GB:.1f} GB in all, {q.resident / GB:.1f} GB that must stay on the GPU: under 48 GB "
          f"{'holds' if q.total < 48 * GB else 'holds only with the paged state evicted' if q.resident < 48 * GB else 'does not hold'}**. "
          "With peft's default fp32 LoRA weights the trainable part doubles "
          f"(+{q.parts['trainable: LoRA and head'] * 2 / GB:.1f} GB with gradients): the bf16 choice matters at 65B. "
          "`python -m harness.plan model=llama_65b method=qlora_nf4_dq method.base_dtype=bf16 lora.r=64 "
          "lora.targets=all_linear train.optimizer=paged_adamw train.batch_size=1 train.max_seq_len=512 "
          "train.gradient_checkpointing=true --lora-dtype bf16`", ""]
    _figure(figs, "QLoRA fine-tuning of LLaMA-65B, planned peak (GPU-resident part in 'resident_gb')",
            "QLoRA abstract and section 1", "under 48 GB", q.total / GB, "GB",
            "holds" if q.total < 48 * GB else "holds only with the paged state evicted" if q.resident < 48 * GB
            else "fails", "python -m harness.plan model=llama_65b method=qlora_nf4_dq method.base_dtype=bf16 "
            "lora.r=64 lora.targets=all_linear train.optimizer=paged_adamw --lora-dtype bf16")
    figs[-1]["resident_gb"] = q.resident / GB
    # 4. 4-bit LLaMA-7B base
    b7 = make_plan(["model=llama_7b", "method=qlora_nf4_dq", "method.base_dtype=bf16", "train.batch_size=1",
                    "train.max_seq_len=512"])
    base = sum(v for k, v in b7.parts.items() if k.startswith("base weights"))
    L += ["### The 4-bit LLaMA-7B base takes about 5 GB (the paper: 5,048 MB)", "",
          f"Quantized linear layers {b7.parts['base weights: quantized linear layers'] / MIB:,.0f} MiB + constants "
          f"{b7.parts['base weights: quantization constants'] / MIB:,.0f} MiB + embeddings, LM head and norms in bf16 "
          f"{b7.parts['base weights: kept in bfloat16'] / MIB:,.0f} MiB = **{base / MIB:,.0f} MiB**. The paper's 5,048 MB "
          f"is {5048 - base / MIB:,.0f} MB more ({(5048 * MIB / base - 1):.0%}). Our count is the bytes of the "
          "tensors; the gap fits what a measured GPU figure adds and the paper does not break down: the CUDA "
          "context (300-500 MB) and the allocator's reserve, and the embeddings and LM head kept in fp32 instead "
          f"of bf16 (+{b7.parts['base weights: kept in bfloat16'] / MIB:,.0f} MiB), as loading without a torch_dtype "
          "does. `python -m harness.plan model=llama_7b method=qlora_nf4_dq method.base_dtype=bf16`", ""]
    _figure(figs, "4-bit LLaMA-7B base model", "QLoRA section 4 (memory footprint, LLaMA-7B)", "5,048 MB",
            base / MIB, "MiB", None, "python -m harness.plan model=llama_7b method=qlora_nf4_dq method.base_dtype=bf16")
    # 5. LLaMA-7B activations
    a_no = make_plan(["model=llama_7b", "method=qlora_nf4_dq", "method.base_dtype=bf16", "train.batch_size=1",
                      "train.max_seq_len=512", "lora.targets=all_linear", "lora.r=64"], lora_dtype="bf16")
    a_ck = make_plan(["model=llama_7b", "method=qlora_nf4_dq", "method.base_dtype=bf16", "train.batch_size=1",
                      "train.max_seq_len=512", "lora.targets=all_linear", "lora.r=64",
                      "train.gradient_checkpointing=true"], lora_dtype="bf16")
    L += ["### LLaMA-7B, batch 1: activations with and without gradient checkpointing", "",
          "The paper: LoRA input gradients 567 MB per sequence, 18 MB with gradient checkpointing (its sequence "
          "length is not stated; 512 tokens assumed here). Planned activations at 1 x 512 tokens, QLoRA r=64 on all "
          f"linear layers: **{a_no.parts['activations'] / MIB:,.0f} MiB** without checkpointing and "
          f"**{a_ck.parts['activations'] / MIB:,.0f} MiB** with it (32 layer inputs of 512 x 4096 x 2 bytes = 128 MiB, "
          "plus one layer recomputed during the backward pass, which the paper's 18 MB leaves out). Ours counts every "
          "tensor autograd keeps, not only the LoRA inputs' gradients, hence larger.", ""]
    _figure(figs, "LLaMA-7B activations at batch 1 x 512 tokens, no checkpointing",
            "QLoRA section 4 (memory footprint, LLaMA-7B)", "567 MB (LoRA input gradients)",
            a_no.parts["activations"] / MIB, "MiB", None, "python -m harness.plan model=llama_7b "
            "method=qlora_nf4_dq lora.targets=all_linear lora.r=64 train.max_seq_len=512")
    _figure(figs, "LLaMA-7B activations at batch 1 x 512 tokens, gradient checkpointing",
            "QLoRA section 4 (memory footprint, LLaMA-7B)", "18 MB per sequence", a_ck.parts["activations"] / MIB,
            "MiB", None, "python -m harness.plan model=llama_7b method=qlora_nf4_dq lora.targets=all_linear "
            "lora.r=64 train.max_seq_len=512 train.gradient_checkpointing=true")
    # 6. GPT-3 LoRA checkpoint
    d, layers, r = 12288, 96, 4
    params = layers * 2 * r * (d + d)
    L += ["### GPT-3 175B LoRA checkpoint, r=4 on Wq and Wv: about 35 MB", "",
          f"{layers} layers x 2 matrices (Wq, Wv) x r={r} x (d_in + d_out = {d} + {d}) = {params:,} parameters x 2 "
          f"bytes (fp16) = **{params * 2 / 1e6:.1f} MB = {params * 2 / MIB:.1f} MiB** (the paper: 35 MB; 350 GB for "
          "the full checkpoint, 10,000x smaller). Shape from `conf/model/gpt3_175b.yaml`.", ""]
    _figure(figs, "GPT-3 175B LoRA checkpoint, r=4 on Wq and Wv (fp16)", "LoRA section 4.2", "35 MB",
            params * 2 / 1e6, "MB", None, "conf/model/gpt3_175b.yaml")
    return L, figs


def peers_section() -> tuple[list[str], list[dict]]:
    from harness.plan import make_plan

    L = ["## Beside what peers publish", "",
         "Same model and, where published, the same settings. Peers measure on GPUs (allocator reserve and CUDA "
         "context included) and use tricks our plain recipe does not (torchtune: optimizer-in-backward, packed "
         "sequences, compiled; LitGPT: its own LoRA defaults), so read the comparison for orders and ratios.", ""]
    rows, peers = [], []
    # LitGPT Llama-2-7B micro-batch 1: the DQ delta is directly comparable
    lit = {m: make_plan(["model=llama2_7b", f"method={m}", "method.base_dtype=bf16", "train.batch_size=1",
                         "train.max_seq_len=512", "lora.r=8", "lora.targets=qv"], lora_dtype="bf16")
           for m in ("lora_bf16", "qlora_nf4", "qlora_nf4_dq")}
    pub = {"lora_bf16": 21.30, "qlora_nf4": 14.14, "qlora_nf4_dq": 13.84}
    for m, p in lit.items():
        rows.append(["LitGPT, Llama-2-7B, A100-40GB, micro-batch 1", m, f"{pub[m]:.2f} GB", f"{p.total / GB:.2f} GB",
                     "r=8 Wq,Wv, 512 tokens assumed"])
        peers.append({"peer": "LitGPT", "model": "Llama-2-7B", "method": m, "published_gb": pub[m],
                      "planned_gb": p.total / GB})
    rows.append(["LitGPT: NF4 -> NF4+DQ", "difference", f"{pub['qlora_nf4'] - pub['qlora_nf4_dq']:.2f} GB",
                 f"{(lit['qlora_nf4'].total - lit['qlora_nf4_dq'].total) / GB:.2f} GB", "the DQ saving, exact"])
    tt = {m: make_plan(["model=llama3_8b", f"method={m}", "method.base_dtype=bf16", "train.batch_size=2",
                        "train.max_seq_len=2048", "lora.r=8", "lora.targets=qv", "train.gradient_checkpointing=true"],
                       lora_dtype="bf16") for m in ("lora_bf16", "qlora_nf4")}
    rows.append(["torchtune, Llama-3.1-8B, RTX 4090, batch 2 x 2048 packed", "lora_bf16", "16.2 GiB",
                 f"{tt['lora_bf16'].total / GIB:.1f} GiB", "activation checkpointing on (torchtune default)"])
    rows.append(["torchtune (same)", "qlora_nf4", "7.4 GiB", f"{tt['qlora_nf4'].total / GIB:.1f} GiB", ""])
    peers += [{"peer": "torchtune", "model": "Llama-3.1-8B", "method": m, "published_gib": v,
               "planned_gib": tt[m].total / GIB} for m, v in (("lora_bf16", 16.2), ("qlora_nf4", 7.4))]
    L += [tables.md_table(["Peer, model, setting", "Method", "Published", "Planned", "Assumed here"], rows,
                          ["l", "l", "r", "r", "l"]), ""]
    return L, peers


def render(store, out_root: Path, papers: bool = True) -> Path:
    L = ["# Memory: where it goes, the planner against measurement and against the papers", "",
         "Generated by `python -m harness.report.memory` from the records of the `memory_minilm` and `memory_smollm2` "
         "experiments and the planner (`harness/plan.py`, `make plan MODEL=...`). How the planner counts: "
         "`python -m harness.plan --help`.", ""]
    sec, stats = measured_section(store)
    L += sec
    summary = {"report": "memory", "experiments": list(EXPERIMENTS), "measured": stats}
    if papers:
        (pl, figs), (ql, peers) = paper_section(), peers_section()
        L += pl + ql
        summary |= {"paper_figures": figs, "peers": peers}
    out = Path(out_root) / "memory"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "README.md"
    path.write_text("\n".join(L))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    from harness.store import Store

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(prog="python -m harness.report.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.environ.get("HARNESS_OUTPUT_ROOT", "outputs"))
    ap.add_argument("--out", default="reports")
    args = ap.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), ap))
    store = Store(args.root)
    store.sync()
    print(render(store, Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
