"""reports/sanity/: does fine-tuning beat its baselines on each local task? (make sanity)

For every task of the sanity experiment: the majority class (or mean), the untrained model (zero-shot), a frozen
backbone with a trained head (head only), and the fine-tuning configurations (LoRA, full fine-tuning), each over
its seeds: mean, its 95% t-interval, min-max and every seed's value; each fine-tuned row against the best
baseline (frame.attach_baselines: the difference paired by seed, with its 95% t-interval). A task is **usable for
claims** when every fine-tuned configuration is clearly above its best baseline (that interval above 0) and no
seed collapsed; otherwise it is shown as such and the local experiments must not test claims on it. Written beside
it: summary.json, the same numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from harness.report import frame, tables
from harness.report.claims import task_key

ORDER = ["majority", "zero_shot", "head_only"]


def _values(runs: pd.DataFrame, group: str) -> list[float]:
    g = runs[(runs["group"] == group) & (runs["status"] == "ok")].sort_values("seed")
    return [round(float(v), 2) for v in g["value"]]


def _config(r: dict) -> str:
    if r["method"] in ORDER:
        return tables.DASH
    parts = [f"lr {r['lr']:.0e}"] if isinstance(r.get("lr"), (int, float)) and not pd.isna(r["lr"]) else []
    if r["targets"] != "-":
        parts.insert(0, f"{tables.targets_label(r['targets'])}, r={int(r['r'])}, alpha={tables.num(r['alpha'], 0)}")
    return "; ".join(parts)


def summarize(records: list[dict]) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(summary, runs, agg): the per-task rows of the report and summary.json."""
    chosen, _ = frame.latest_per_config(records)
    runs = frame.runs_frame(chosen)
    agg = frame.aggregate(runs, "mean")
    if agg.empty:
        return {"tasks": {}}, runs, agg
    base = agg[agg["baseline"].isin(frame.BASELINES)]
    agg = frame.attach_baselines(agg, base)
    out: dict = {"tasks": {}}
    for (task, model), g in agg.groupby(["task", "model"], sort=True):
        rows = []
        key = {m: i for i, m in enumerate(ORDER)}
        g = g.assign(_o=[key.get(m, len(ORDER)) for m in g["method"]]).sort_values(["_o", "method"], kind="stable")
        for _, r in g.iterrows():
            r = r.to_dict()
            rows.append({
                "method": r["method"], "baseline": r["method"] in ORDER, "config": _config(r),
                "metric": r["metric"], "split": r["split"], "eval_examples": int(r["eval_examples"] or 0),
                "train_examples": None if pd.isna(r["train_examples"]) else int(r["train_examples"]),
                "steps": None if pd.isna(r["steps"]) else int(r["steps"]),
                "mean": round(float(r["value"]), 2),
                "ci95": None if pd.isna(r["ci_lo"]) else [round(float(r["ci_lo"]), 2), round(float(r["ci_hi"]), 2)],
                "sd": None if pd.isna(r["sd"]) else round(float(r["sd"]), 2), "min": round(float(r["min"]), 2),
                "max": round(float(r["max"]), 2), "seeds": int(r["seeds"]), "values": _values(runs, r["group"]),
                "best_baseline": None if r.get("baseline_value") is None else {
                    "method": r["baseline_method"], "mean": round(float(r["baseline_value"]), 2)},
                "vs_baseline": r.get("vs_baseline"), "minus_baseline": r.get("vs_baseline_diff"),
                "collapsed": None if r.get("collapsed") is None else int(r["collapsed"]),
                "seeds_below_baseline": None if r.get("seeds_below") is None else int(r["seeds_below"]),
                "failed": int(r.get("failed") or 0),
                "train_s": None if pd.isna(r["train_s"]) else round(float(r["train_s"]), 1),
            })
        tuned = [x for x in rows if not x["baseline"]]
        usable = bool(tuned) and all(x["vs_baseline"] == frame.CLEAR and not x["collapsed"] and not x["failed"]
                                     for x in tuned)
        out["tasks"][f"{task}/{model}"] = {
            "task": task, "model": model, "pair_encoding": pe if isinstance(pe := g["pair_encoding"].iloc[0], str) else None, "rows": rows,
            "usable_for_claims": usable,
            "why": ("every fine-tuned configuration is clearly above its best baseline" if usable else
                    "no fine-tuned configuration has an ok run" if not tuned else
                    "not every fine-tuned configuration is clearly above its best baseline: " + ", ".join(
                        f"{x['method']} {x['vs_baseline'] or 'has no baseline'}"
                        + (f", {x['collapsed']} seed(s) collapsed" if x["collapsed"] else "")
                        + (f", {x['failed']} run(s) failed" if x["failed"] else "") for x in tuned
                        if x["vs_baseline"] != frame.CLEAR or x["collapsed"] or x["failed"])),
        }
    ok = runs[runs["status"] == "ok"]
    out["runs"] = {"ok": int(len(ok)), "not_ok": int(len(runs) - len(ok)),
                   "sum_of_run_times_s": round(float(ok["total_s"].astype(float).sum()), 1),
                   "cpu": sorted(set(str(c) for c in ok["cpu"].dropna())),
                   "compute_dtype": sorted(set(str(c) for c in ok["compute_dtype"].dropna()))}
    return out, runs, agg


def usable_tasks(records: list[dict]) -> dict[str, bool] | None:
    """{claims.task_key: usable for claims} from the sanity experiment's records; None when there are none."""
    if not records:
        return None
    return {task_key(t["task"], t["model"], t["pair_encoding"]): bool(t["usable_for_claims"])
            for t in summarize(records)[0]["tasks"].values()}


def own_usable(records: list[dict], known: dict[str, bool] | None) -> dict[str, bool]:
    """{task_key: usable} judged on an experiment's own records, by make sanity's rule, for the tasks the sanity
    experiment has not checked (absent from `known`) on which the experiment ran a baseline itself."""
    if not records or not any(frame.baseline_name(r) in frame.BASELINES for r in records):
        return {}
    out = {}
    for t in summarize(records)[0]["tasks"].values():
        key = task_key(t["task"], t["model"], t["pair_encoding"])
        if key not in (known or {}) and any(x["baseline"] for x in t["rows"]):
            out[key] = bool(t["usable_for_claims"])
    return out


def task_notes(records: list[dict], task: str, model: str) -> list[str]:
    """The distinct `report.note`s of a task's runs (its grid's: e.g. why it trains fewer than 200 steps), in the
    order the runs finished."""
    out: list[str] = []
    for r in sorted(records, key=lambda r: str(r.get("finished_at") or "")):
        c = r.get("config") or {}
        note = (c.get("report") or {}).get("note")
        if note and (c.get("task") or {}).get("name") == task and (c.get("model") or {}).get("name") == model \
                and note not in out:
            out.append(str(note))
    return out


def judged_elsewhere(out_root: Path, checked: set[str]) -> list[tuple[str, str, bool]]:
    """(task key, experiment, usable) for the tasks other reports under `out_root` judged on their own baseline
    runs (their summary.json's `own_usable`), leaving out the tasks this sanity run checks itself."""
    out = []
    for js in sorted(out_root.glob("*/summary.json")):
        if js.parent.name == "sanity":
            continue
        try:
            doc = json.loads(js.read_text())
        except (OSError, ValueError):
            continue
        for key, ok_ in sorted((doc.get("own_usable") or {}).items()):
            if key not in checked:
                out.append((key, str(doc.get("experiment") or js.parent.name), bool(ok_)))
    return out


def render(records: list[dict], out_root: Path) -> Path:
    summary, runs, agg = summarize(records)
    out = out_root / "sanity"
    out.mkdir(parents=True, exist_ok=True)
    r = summary.get("runs", {})
    lines = ["# Sanity: does fine-tuning beat its baselines on each local task?", "",
             f"Generated by `python -m harness.report` from {len(records)} result records of the `sanity` experiment "
             "(`make sanity`: MiniLM-L6 on MRPC, and STS-B with `ARGS=\"task=stsb\"`; `make sanity-wikisql`: "
             "SmolLM2 on WikiSQL, one run at a time, kept out of make sanity's 20 minutes). Do not edit. "
             "Numbers: mean over seeds on the x100 scale, min–max and each seed's value; the eval split is the "
             "task's dev split.", "",
             f"Runs: {r.get('ok', 0)} ok, {r.get('not_ok', 0)} not ok; the runs' own times add up to "
             f"{r.get('sum_of_run_times_s', 0):.0f} s; CPU: {', '.join(r.get('cpu', [])) or tables.DASH}; compute "
             f"dtype: {', '.join(r.get('compute_dtype', [])) or tables.DASH}. The wall time of `make sanity` "
             "(launcher included) is in the README.", "",
             "A task is **usable for claims** only when every fine-tuned configuration is *clearly above* its best "
             "baseline, with no failed or collapsed seed: the 95% t-interval of the difference, paired by seed (seed "
             "s draws the same training subset for every method), lies above 0. Intervals are Student-t with n-1 "
             "degrees of freedom (with 3 seeds the multiplier is 4.30). A collapsed seed ends within "
             f"{frame.COLLAPSE_MARGIN:g} point of the majority-class / mean predictor. Baselines: majority class / mean label (loads no model), zero-shot (the "
             "untrained model: a bi-encoder's cosine; with two classes, one cosine threshold fit on the training "
             "pairs), head only (frozen backbone, the head trains; for a bi-encoder regression a linear "
             "projection, identity at start).", ""]
    for name, t in summary["tasks"].items():
        verdict = "**usable for claims**" if t["usable_for_claims"] else "**not usable for claims**"
        head = f"## {tables.TASK_LABELS.get(t['task'], t['task'])} — {t['model']}"
        if t["pair_encoding"]:
            head += f" ({t['pair_encoding']}-encoder)"
        lines += [head, "", f"{verdict}: {t['why']}.", ""]
        for n in task_notes(records, t["task"], t["model"]):
            lines += [f"Note: {n}", ""]
        rows = []
        for x in t["rows"]:
            bb = x["best_baseline"]
            rows.append([tables.METHOD_LABELS.get(x["method"], x["method"]), x["config"],
                         tables.METRIC_LABELS.get(x["metric"], x["metric"]), f"{x['mean']:.1f}",
                         tables.DASH if not x["ci95"] else f"[{x['ci95'][0]:.1f}, {x['ci95'][1]:.1f}]",
                         f"{x['min']:.1f}–{x['max']:.1f}", ", ".join(f"{v:.1f}" for v in x["values"]),
                         str(x["train_examples"] or tables.DASH), str(x["steps"] if x["steps"] else tables.DASH),
                         tables.DASH if not bb else f"{bb['mean']:.1f} ({tables.METHOD_LABELS.get(bb['method'])})",
                         (x["minus_baseline"] or tables.DASH).split(" (")[0],
                         (x["vs_baseline"] or tables.DASH) + "".join(
                             f"; {x[k]} {w}" for k, w in (("collapsed", "collapsed"), ("failed", "failed")) if x[k])])
        lines += [tables.md_table(["Method", "Recipe", "Metric", "Mean", "95% t-CI", "Min–max", "Seeds", "Train ex.",
                                   "Steps", "Best baseline", "− baseline, paired [95% CI]", "vs baseline"], rows,
                                  ["l", "l", "l", "r", "r", "r", "l", "r", "r", "r", "r", "l"]), ""]
    elsewhere = judged_elsewhere(out_root, {task_key(t["task"], t["model"], t["pair_encoding"])
                                            for t in summary["tasks"].values()})
    if elsewhere:
        lines += ["## Tasks judged in their own experiments", "",
                  "Local tasks that make sanity does not run, each judged by the same rule on the baseline runs of "
                  "the experiment that tests claims on it (read from that report's summary.json: its "
                  "\"Claims checked\" section says so, and gates its claims on it).", "",
                  tables.md_table(["Task", "Experiment", "Verdict"],
                                  [[key.removesuffix("/-"), f"[{exp}](../{exp}/README.md)",
                                    "**usable for claims**" if ok_ else "**not usable for claims**"]
                                   for key, exp, ok_ in elsewhere], ["l", "l", "l"]), ""]
    summary["judged_elsewhere"] = [{"task": key, "experiment": exp, "usable_for_claims": ok_}
                                   for key, exp, ok_ in elsewhere]
    path = out / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    js = out / "summary.json"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, js)
    return path
