"""QLoRA Table 2: 4-bit data types (Int4, FP4 E2M1/E3M0, NF4, with and without double quantization), no training.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`qlora_table2`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: qlora_table2).
"""

from __future__ import annotations

import pandas as pd

from harness.report import stats
from harness.report.claims import Claim, diff, REASONS, SANITY_BOUND
from harness.report.tables import DASH, find, md_table, METRIC_LABELS, num, TASK_LABELS

TABLE = "qlora_table2"


def mirror(agg: pd.DataFrame, paper: dict) -> str:
    """Each storage type's zero-shot quality (perplexity, or a task metric where higher is better), with its 95%
    bootstrap interval over the eval examples and the paired difference from fp32 where predictions were saved, the
    per-layer reconstruction error of the simulated types, and what the linear layers hold."""
    from harness.report import examples

    header = ["Data type", "Ours: task, model", "Ours: metric [95% CI]", "− fp32 [95% CI]",
              "Rel. error per layer", "Bits/param (linear layers)", "Linear layers MiB", "Paper: mean PPL"]
    rows = []
    for (task, model), g in agg.groupby(["task", "model"], sort=False):
        ref = find(g, method="full")
        for prow in paper["rows"]:
            r = find(g, method=prow["method"])
            if r is None:
                continue
            split, metric = r["split"], r["metric"]
            scale = 100.0 if r.get("higher_better", True) else 1.0
            digits = 1 if scale == 100.0 else 2
            one = {"_dir": next(iter((r.get("dirs") or {}).values()), None)}
            ci = examples.interval(one, split, metric, scale)
            cell = num(r["value"], digits) + (f" [{num(ci.interval()[0], digits)}, {num(ci.interval()[1], digits)}]"
                                               if ci is not None else "")
            delta = DASH
            if ref is not None and r["method"] != ref["method"]:
                d = examples.paired_bootstrap(one, {"_dir": next(iter((ref.get("dirs") or {}).values()), None)},
                                              split, metric, scale)
                delta = f"{r['value'] - ref['value']:+.{digits}f}" + (
                    f" [{d.interval()[0]:+.{digits}f}, {d.interval()[1]:+.{digits}f}]" if d is not None else "")
            mb = r.get("linear_bytes")
            err = r.get("rel_error")
            simulated = bool(r.get("fake_quant")) and not pd.isna(r.get("fake_quant"))
            rows.append([prow["label"], f"{TASK_LABELS.get(task, task)} {METRIC_LABELS.get(metric, metric)}, {model}",
                         cell, delta, DASH if err is None or pd.isna(err) else f"{100 * err:.1f}%",
                         f"{num(r.get('bits_simulated'), 3)} (simulated)" if simulated else num(r.get("bits_per_param"), 3),
                         "–" if simulated else num(None if mb is None else mb / 2 ** 20, 1), num(prow.get("value"), 2)])
    return md_table(header, rows, ["l", "l"] + ["r"] * 6)


def table2_data_types(agg: pd.DataFrame) -> list[Claim]:
    """Evaluation only, one deterministic evaluation per data type of the same eval examples. Where the runs saved
    per-example predictions (a classifier or regressor: MiniLM on STS-B) a type beats another when the paired
    bootstrap interval over the examples excludes 0 (perplexity: resampling answers, each with its NLL sum and token
    count); where they did not (records made before per-answer losses were saved) the numbers are shown and the
    verdict is "not resolved": the sampling error of the eval set is unknown."""
    out = []
    src = "QLoRA Table 2, section 4"
    caveat = (" One deterministic evaluation per data type on the same examples; per-example scores were not saved, so "
              "there is no interval and the verdict is left open whatever the direction.")
    names = ("full", "qlora_fp4", "qlora_fp4_dq", "qlora_nf4", "qlora_nf4_dq", "fake_int4", "fake_fp4_e3m0",
             "fake_nf4", "fake_fp4")
    labels = {"qlora_fp4": "FP4 (E2M1)", "qlora_fp4_dq": "FP4+DQ", "qlora_nf4": "NF4", "qlora_nf4_dq": "NF4+DQ",
              "fake_int4": "Int4 (simulated)", "fake_fp4_e3m0": "FP4 E3M0 (simulated)", "full": "full precision",
              "fake_nf4": "NF4 (simulated)", "fake_fp4": "FP4 (simulated)"}
    for (task, model), g in agg.groupby(["task", "model"]):
        rows = {m: find(g, method=m) for m in names}
        higher = bool(next(iter(r for r in rows.values() if r is not None), {}).get("higher_better", True))
        what = "scores higher" if higher else "has lower perplexity"

        def v(m):
            return float(rows[m]["value"])

        def better(a: str, b: str, claim: str, paper: str) -> None:
            if rows[a] is None or rows[b] is None:
                return
            d = diff(rows[a], rows[b]) if higher else diff(rows[b], rows[a])  # > 0: a is better
            nums = f"{labels[a]} {v(a):.3f}, {labels[b]} {v(b):.3f} ({v(a) - v(b):+.3f})"
            if d is not None:
                verdict, ev = stats.beats(d), f"{nums}; {'A − B' if higher else 'B − A'} {d.text()}."
            else:  # no interval, no verdict: the numbers are shown, the sampling error of the eval set is unknown
                verdict, ev = stats.UNRESOLVED, nums + "." + caveat
            out.append(Claim("qlora_table2", f"{task}/{model}: {claim} ({what}; the paper: {paper})", verdict, ev, src,
                             None, d, REASONS["qlora_table2"]))

        better("qlora_nf4", "qlora_fp4", "NF4 beats FP4 (E2M1)", "NF4+DQ 27.41 vs Float4 E2M1 31.07")
        better("qlora_nf4_dq", "qlora_fp4_dq", "with double quantization too, NF4 beats FP4", "no DQ row for FP4")
        better("qlora_nf4", "fake_int4", "NF4 beats Int4", "NF4+DQ 27.41 vs Int4 34.34")
        better("fake_fp4_e3m0", "qlora_fp4", "FP4 E3M0 beats FP4 E2M1", "29.48 vs 31.07")
        better("qlora_fp4", "fake_int4", "FP4 E2M1 beats Int4", "31.07 vs 34.34")
        for sim, real in (("fake_nf4", "qlora_nf4"), ("fake_fp4", "qlora_fp4")):
            if rows[sim] is not None and rows[real] is not None:
                gap = abs(v(sim) - v(real))
                out.append(Claim("qlora_table2", f"{task}/{model}: the torch simulation of {labels[real]} scores as "
                                 "bitsandbytes' own (within 0.1 point: the same codes and rounding, a test checks "
                                 "the weights are identical; only the matmul kernels differ)",
                                 stats.HOLDS if gap <= 0.1 else stats.FAILS,
                                 f"{labels[sim]} {v(sim):.3f}, {labels[real]} {v(real):.3f}.", SANITY_BOUND))
        bits = {m: rows[m] for m in ("qlora_nf4", "qlora_nf4_dq", "qlora_fp4", "qlora_fp4_dq")}
        pairs = [(a, b) for a, b in (("qlora_nf4", "qlora_nf4_dq"), ("qlora_fp4", "qlora_fp4_dq"))
                 if bits[a] is not None and bits[b] is not None and bits[a].get("bits_per_param")]
        if pairs:
            # the paper counts packed weights and per-block constants; older records hold only the total, which
            # also counts bitsandbytes' per-tensor code book (1 KiB per layer)
            key = "bits_per_param_blocks" if all(pd.notna(bits[b].get("bits_per_param_blocks")) for _, b in pairs) \
                else "bits_per_param"
            saved = [bits[a][key] - bits[b][key] for a, b in pairs]
            note = ("packed weights and block constants, as the paper counts" if key == "bits_per_param_blocks" else
                    "all bytes held, including the per-tensor code book of each double-quantized layer, which the "
                    "paper's count leaves out")
            out.append(Claim("qlora_table2", f"{task}/{model}: double quantization saves 0.373 bits per parameter "
                             "(within 0.01)", stats.HOLDS if all(abs(x - 0.373) <= 0.01 for x in saved) else stats.FAILS,
                             f"measured on the quantized linear layers ({note}): " + ", ".join(
                                 f"{a} {bits[a][key]:.3f} -> {b} {bits[b][key]:.3f} "
                                 f"({x:.3f} saved)" for (a, b), x in zip(pairs, saved)) + ". Exact byte counts.",
                             "QLoRA section 3 (Double Quantization)"))
        if rows["full"] and rows["qlora_nf4_dq"]:
            d = v("qlora_nf4_dq") - v("full")
            worse = -d if higher else d
            out.append(Claim("qlora_table2", f"{task}/{model}: NF4+DQ costs less than 10% of the full-precision "
                             "base's score (not a paper claim: a sanity bound for a 4-bit type)",
                             stats.HOLDS if worse < 0.1 * abs(v("full")) else stats.FAILS,
                             f"full precision {v('full'):.3f}, NF4+DQ {v('qlora_nf4_dq'):.3f} "
                             f"({100 * d / v('full'):+.1f}%).", SANITY_BOUND))
    return out


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [table2_data_types]
GATED = ()
