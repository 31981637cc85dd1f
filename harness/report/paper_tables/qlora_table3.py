"""QLoRA Table 3: every QLoRA data type against 16-bit LoRA and full fine-tuning.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`qlora_table3`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: qlora_table3).
"""

from __future__ import annotations

import pandas as pd

from harness.report import stats
from harness.report.claims import Claim, DELTA, diff, _dtext, _fmt, memory_full_above_lora, needs_more_memory, REASONS
from harness.report.tables import (cost_cells, COST_HEADER, DASH, find, md_table, METHOD_LABELS, metric_name, num,
                                   ours, targets_label, TASK_LABELS)
from harness.report.paper_tables.qlora_fig2_fig4 import figures_all_linear

TABLE = "qlora_table3"


def mirror(agg: pd.DataFrame, paper: dict) -> str:
    tasks = list(dict.fromkeys(agg["task"]))
    pcols = paper["columns"]
    header = ["Data type", *[f"ours: {TASK_LABELS.get(t, t)} {metric_name(agg, t)}" for t in tasks],
              f"paper: {pcols['glue_roberta_large']}", "paper: T5 80M / 250M / 780M / 3B / 11B", *COST_HEADER]
    rows = []
    for prow in paper["rows"]:
        g = agg[agg["method"] == prow["method"]] if prow.get("method") else agg.iloc[0:0]
        v = prow.get("values", {})
        if g.empty and not v:
            continue  # a row of ours only (not in the paper) that did not run
        t5 = " / ".join(num(v.get(k)) for k in ("t5_80m", "t5_250m", "t5_780m", "t5_3b", "t5_11b"))
        if g.empty:  # the paper's row beside nothing of ours: not run here
            what = "not run here" if prow.get("method") else "no counterpart here"
            rows.append([f"{prow['label']} — ours: {what}", *[DASH for _ in tasks],
                         num(v.get("glue_roberta_large")), t5, *[DASH] * len(COST_HEADER)])
            continue
        first = g.iloc[0].to_dict()
        dtype = first.get("compute_dtype") or ""
        label = f"{prow['label']} — ours: {METHOD_LABELS.get(prow['method'], prow['method'])}, {dtype} compute"
        rows.append([label, *[ours(find(g, task=t)) for t in tasks], num(v.get("glue_roberta_large")),
                     t5 if v else DASH, *cost_cells(first)])
    return md_table(header, rows)


def table3_quantized_match(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "QLoRA Table 3, section 4"
    for (task, model), g in agg.groupby(["task", "model"]):
        ref_m = "lora_bf16" if (g["method"] == "lora_bf16").any() else "lora"
        quant = sorted(m for m in set(g["method"]) if str(m).startswith("qlora"))
        if not (g["method"] == ref_m).any() or not quant:
            continue
        ref_label = "LoRA on a bf16 base" if ref_m == "lora_bf16" else "LoRA on an fp32-stored base"
        per = []
        for m in quant:
            for (t, r), _ in g[g["method"] == m].groupby(["targets", "r"]):
                lv, qv = find(g, method=ref_m, targets=t, r=r), find(g, method=m, targets=t, r=r)
                if lv is None or qv is None:
                    continue
                per.append((m, t, r, diff(qv, lv)))
        parts = [stats.equivalent(d, DELTA, parts=len(per)) for *_, d in per]
        nf = next(((t, r, d) for m, t, r, d in per if m == "qlora_nf4_dq"), None)
        if nf is not None:
            out.append(Claim("qlora_table3", f"{task}/{model}: NF4 with double quantization matches 16-bit LoRA "
                             f"({ref_label}; equivalence within {DELTA:g} point)", stats.equivalent(nf[2], DELTA),
                             f"NF4+DQ − {ref_m} ({targets_label(nf[0])}, r={int(nf[1])}): {_dtext(nf[2])}.", src, DELTA,
                             nf[2], REASONS["qlora_table3"]))
        if per:
            out.append(Claim("qlora_table3", f"{task}/{model}: every QLoRA data type matches 16-bit LoRA ({ref_label}; "
                             f"equivalence within {DELTA:g} point)", stats.all_of(parts),
                             "QLoRA − LoRA: " + "; ".join(f"{m} {targets_label(t)} r={int(r)} {_dtext(d)}"
                                                          for m, t, r, d in per) + ".",
                             src, DELTA, None, REASONS["qlora_table3"]))
        full = find(g, method="full")
        nf_row = find(g, method="qlora_nf4_dq")
        if full is not None and nf_row is not None:
            d = diff(nf_row, full)
            out.append(Claim("qlora_table3", f"{task}/{model}: NF4 with double quantization matches full fine-tuning "
                             f"(within {DELTA:g} point, or better)", stats.noninferior(d, DELTA),
                             f"full {_fmt(full['value'])}, NF4+DQ {_fmt(nf_row['value'])}; NF4+DQ − full {_dtext(d)}.",
                             src, DELTA, d, REASONS["qlora_table3"]))
        refs = [(ref_m, ref_label)] + ([("lora", "the same LoRA on an fp32-stored base (not the paper's reference: "
                                        "the one with the quantized runs' compute dtype)")] if ref_m != "lora" else [])
        for rm, rlabel in refs:
            lref = find(g, method=rm)
            if lref is None or pd.isna(lref.get("peak_mb")):
                continue
            mem, qs, dtypes = [], [], set()
            for m in quant:  # the same adapter placement and rank as the LoRA reference
                q = find(g, method=m, targets=lref["targets"], r=lref["r"]) if lref["targets"] != "-" else None
                if q is None or pd.isna(q.get("peak_mb")):
                    continue
                qs.append(q)
                mem.append(f"{m} {q['peak_mb']:.0f} MiB")
                dtypes.add(str(q.get("compute_dtype")))
            if not mem:
                continue
            parts = [needs_more_memory(lref, q, parts=len(qs))[0] for q in qs]
            reason = REASONS["memory"]
            if dtypes - {str(lref.get("compute_dtype"))}:  # e.g. a bf16-autocast reference against fp32 4-bit runs
                reason += (f"; and here the reference computes in {lref.get('compute_dtype')} while the quantized runs "
                           f"compute in {', '.join(sorted(dtypes))} (bitsandbytes dequantizes to the compute dtype; "
                           "on a CPU without a fast bf16 path the harness computes in fp32), so its activations "
                           "are smaller")
            out.append(Claim("memory", f"{task}/{model}: every quantized base (Int8 included) needs less training "
                             f"memory than {rlabel} (QLoRA's premise)", stats.all_of(parts),
                             f"peak over the process baseline at {targets_label(lref['targets'])} r={int(lref['r'])}: "
                             f"{rm} {lref['peak_mb']:.0f} MiB ({lref.get('compute_dtype')} compute); " + ", ".join(mem)
                             + " (paired over seeds where several ran; else a 2% margin).",
                             "QLoRA section 1 and Figure 1", None, None, reason))
    return out


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [table3_quantized_match, memory_full_above_lora, figures_all_linear]
GATED = (table3_quantized_match,)
