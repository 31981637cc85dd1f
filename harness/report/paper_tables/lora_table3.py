"""LoRA Table 3: GPT-2 on E2E NLG (BLEU, NIST, METEOR, ROUGE-L, CIDEr), LoRA against full fine-tuning.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`lora_table3`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: lora_table3).
"""

from __future__ import annotations

import pandas as pd

from harness.report import stats
from harness.report.claims import Claim, DELTA, diff, _dtext, _fmt, lora_reference, memory_full_above_lora, SCALE_REASON
from harness.report.tables import DASH, find, human, md_table, METHOD_LABELS, num, targets_label
from harness.report.paper_tables.qlora_table3 import table3_quantized_match

TABLE = "lora_table3"


def e2e_value(name: str, v: float | None, paper: dict) -> float | None:
    """A metric on the paper's scale: BLEU, METEOR, ROUGE-L x100; NIST and CIDEr as they are."""
    return None if v is None else v * (100.0 if name in paper["percent"] else 1.0)


def e2e_num(name: str, v, paper: dict) -> str:
    return num(v, 1 if name in paper["percent"] else 2)


def mirror(agg: pd.DataFrame, paper: dict) -> str:
    """Every E2E metric per method: the median over seeds [min–max], the paper's GPT-2 M row of the method beside."""
    names = paper["metrics"]
    header = ["Model & method", "#Trainable", "Seeds", *[paper["metric_labels"][m] for m in names]]
    rows = []
    for _, r in agg.iterrows():
        r = r.to_dict()
        prow = next((p for p in paper["rows"] if p["model"] == paper["reference_model"] and p["method"] == r["method"]
                     and p.get("beside", True)), None)
        cells = []
        for m in names:
            vals = [e2e_value(m, v, paper) for v in (r.get("metric_values") or {}).get(m, {}).values()]
            pv = (prow or {}).get("values", {}).get(m)
            if not vals:
                cells.append(DASH)
                continue
            s = pd.Series(vals)
            cell = e2e_num(m, s.median(), paper)
            if len(vals) > 1:
                cell += f" [{e2e_num(m, s.min(), paper)}–{e2e_num(m, s.max(), paper)}]"
            cells.append(cell + (f" ({e2e_num(m, pv, paper)})" if pv is not None else ""))
        label = f"{r['model']} {METHOD_LABELS.get(r['method'], r['method'])}"
        if r.get("targets") not in (None, "-") and not pd.isna(r.get("r")):
            label += f" ({targets_label(r['targets'])}, r={int(r['r'])})"
        trainable = human(r["trainable"]) if r["method"] not in ("zero_shot", "majority") else "0"
        rows.append([label, f"{trainable} ({(prow or {}).get('trainable', DASH)})", str(int(r["seeds"])), *cells])
    for p in paper["rows"]:
        spread = p.get("spread") or {}
        rows.append([f"paper: {p['label']}", p["trainable"], DASH,
                     *[e2e_num(m, p["values"].get(m), paper) + (f" ±{spread[m]:g}" if m in spread else "")
                       for m in names]])
    return md_table(header, rows, ["l", "r", "r"] + ["r"] * len(names))


def table3_e2e_lora_matches_full(agg: pd.DataFrame) -> list[Claim]:
    """LoRA Table 3 (E2E NLG): LoRA matches or exceeds full fine-tuning, on the headline metric (BLEU)."""
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        full, lora = find(g, method="full"), lora_reference(g)
        if full is None or lora is None:
            continue
        d = diff(lora, full)
        metric = str(lora.get("metric") or "")
        out.append(Claim("lora_table3", f"{task}/{model}: LoRA matches or exceeds full fine-tuning on {metric.upper()} "
                         f"(within {DELTA:g} point, or better) while training {lora['trainable_pct']:.2f}% of the "
                         "parameters", stats.noninferior(d, DELTA),
                         f"LoRA {_fmt(lora['value'])} vs full {_fmt(full['value'])}; LoRA − full {_dtext(d)}.",
                         "LoRA Table 3, section 5.4", DELTA, d, SCALE_REASON))
    return out


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [table3_e2e_lora_matches_full, table3_quantized_match, memory_full_above_lora]
GATED = (table3_e2e_lora_matches_full,)
