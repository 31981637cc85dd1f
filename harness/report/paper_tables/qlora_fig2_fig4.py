"""QLoRA Figures 2 and 4: LoRA on all linear layers against attention only, and the rank.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`qlora_fig2_fig4`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: qlora_fig2_fig4).
"""

from __future__ import annotations

import pandas as pd

from harness.report import stats
from harness.report.claims import Claim, DELTA, diff, _dtext, memory_full_above_lora, SCALE_REASON
from harness.report.tables import find

TABLE = "qlora_fig2_fig4"
mirror = None  # its figures are the report's plots; no table layout


def figures_all_linear(agg: pd.DataFrame) -> list[Claim]:
    """QLoRA Figure 2 (LoRA on all linear layers is needed to match full fine-tuning) and Figure 4 (rank matters
    little once all layers are adapted)."""
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        for m in ("lora", "lora_bf16", "qlora_nf4_dq", "qlora_nf4"):
            gm = g[g["method"] == m]
            ranks = sorted(set(int(r) for r in gm.loc[gm["targets"] == "all_linear", "r"].dropna())
                           & set(int(r) for r in gm.loc[gm["targets"] == "qv", "r"].dropna()))
            if ranks:
                ds = {r: diff(find(gm, targets="all_linear", r=r), find(gm, targets="qv", r=r)) for r in ranks}
                out.append(Claim("qlora_fig2", f"{task}/{model}, {m}: LoRA on all linear layers beats Wq,Wv only, at "
                                 "every rank", stats.all_of([stats.beats(d, parts=len(ds)) for d in ds.values()]),
                                 "all linear − Wq,Wv: " + "; ".join(f"r={r} {_dtext(d)}" for r, d in ds.items()) + ".",
                                 "QLoRA Figure 2, section 4", None, None, SCALE_REASON))
            al = sorted(set(int(r) for r in gm.loc[gm["targets"] == "all_linear", "r"].dropna()))
            if len(al) > 1:
                d = diff(find(gm, targets="all_linear", r=al[-1]), find(gm, targets="all_linear", r=al[0]))
                out.append(Claim("qlora_fig4", f"{task}/{model}, {m}: with all linear layers adapted, rank matters "
                                 f"little (r={al[-1]} vs r={al[0]}, equivalence within {DELTA:g} point)",
                                 stats.equivalent(d, DELTA), f"r={al[-1]} − r={al[0]}: {_dtext(d)}.",
                                 "QLoRA Figure 4, section 4", DELTA, d, SCALE_REASON))
        full = find(g, method="full")
        for m in ("lora", "qlora_nf4_dq"):  # the paper's Figure 2 arms are QLoRA's; LoRA where a grid has it
            gm = g[g["method"] == m]
            al = _best_of(gm, "all_linear")
            qv = _best_of(gm, "qv")
            if full is None or al is None:
                continue
            d = diff(al, full)
            d2 = diff(qv, full) if qv is not None else None
            text = (f"all linear (r={int(al['r'])}) − full {_dtext(d)}"
                    + (f"; Wq,Wv (r={int(qv['r'])}) − full {_dtext(d2)}" if qv is not None else ""))
            k = 1 if qv is None else 2
            verdicts = [stats.noninferior(d, DELTA, parts=k)]
            if qv is not None:  # "needed": attention-only falls short where all-linear matches
                verdicts.append(stats.falls_short(d2, DELTA, parts=k))
            out.append(Claim("qlora_fig2", f"{task}/{model}, {m}: LoRA on all linear layers is needed to match full "
                             f"fine-tuning (within {DELTA:g} point; each placement at its best rank here)",
                             stats.all_of(verdicts), text + ".", "QLoRA Figure 2, section 4", DELTA, d, SCALE_REASON))
    return out


def _best_of(g: pd.DataFrame, targets: str):
    """The best rank's row of a target set (None if it did not run): the comparison the figure draws."""
    rows = g[g["targets"] == targets]
    if rows.empty:
        return None
    return find(rows, r=rows.loc[rows["value"].idxmax(), "r"])


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [figures_all_linear, memory_full_above_lora]
GATED = (figures_all_linear,)
