"""Render reports/<experiment>/README.md (+ PNG plots) for every experiment in the results store.

    python -m harness.report                          # every experiment with records
    python -m harness.report experiment=lora_table6 root=outputs out=reports

Reports are built from result records and harness/report/paper_values.yaml only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from harness.cli import key_value_args
from harness.report import claims as claim_checks
from harness.report import frame, paper_tables, tables

log = logging.getLogger("harness.report")


def paper_values() -> dict:
    return yaml.safe_load(resources.files("harness.report").joinpath("paper_values.yaml").read_text())


def _cfg(rec: dict, *path, default=None):
    d = rec.get("config") or {}
    for p in path:
        if not isinstance(d, dict):
            return default
        d = d.get(p, default)
    return d


def scale_table(records: list[dict], runs: pd.DataFrame, agg: pd.DataFrame) -> str:
    ok = runs[runs["status"] == "ok"]
    # parameters and steps of what fine-tunes: a majority baseline loads no model (0 parameters), zero-shot trains
    # nothing; the baselines are counted apart
    base = ok["baseline"].isin(frame.BASELINES) if "baseline" in ok else pd.Series(False, index=ok.index)
    ft = ok[~base] if (~base).any() else ok
    models = []
    for m, g in ft.groupby("model"):
        models.append(f"{m} ({tables.human(g['total'].dropna().min())} parameters with the smallest adapter)")
    task_rows = []
    for t, g in ok.groupby("task"):
        # the training set of what fine-tunes (a zero-shot baseline records 0 training examples)
        gt = g[~base.loc[g.index]] if (~base.loc[g.index]).any() else g
        ex = sorted(set(int(x) for x in gt["train_examples"].dropna()))
        ev = sorted(set(int(x) for x in g["eval_examples"].dropna()))
        task_rows.append(f"{tables.TASK_LABELS.get(t, t)}: {', '.join(map(str, ex))} train / "
                         f"{', '.join(map(str, ev))} eval examples")
    pct = ft["trainable_pct"].dropna().astype(float)
    trn = ft["trainable"].dropna().astype(float)
    steps = sorted(set(int(x) for x in ft["steps"].dropna()))
    base_steps = {b.replace("_", " "): sorted(set(int(x) for x in g["steps"].dropna()))
                  for b, g in ok[base].groupby("baseline")} if base.any() and (~base).any() else {}
    seeds = sorted(set(int(x) for x in ok["seed"].dropna()))
    dev = []
    for (d, cpu, gpu), g in ok.groupby(["device", "cpu", "gpu"], dropna=False):
        dtypes = sorted({str(x) for x in g["compute_dtype"].dropna()}) if "compute_dtype" in g else []
        dev.append(f"{d}: {gpu if isinstance(gpu, str) else cpu}"
                   + (f"; compute {', '.join(dtypes)}" if dtypes else ""))
    counts = runs["status"].value_counts().to_dict()
    how = _cfg(records[0], "report", "aggregate", default="median")
    eval_only = evaluation_only(runs)
    rows = [
        ["Scale", ", ".join(sorted(set(str(s) for s in ok["scale"].dropna()))) or tables.DASH],
        ["Model", "; ".join(models) or tables.DASH],
        *[["Weights", w] for w in [weights_note(records)] if w],
        ["Data", "; ".join(task_rows) or tables.DASH],
        *([] if eval_only else [
            ["Trainable parameters", f"{_span(tables.human(trn.min()), tables.human(trn.max()))} "
                                     f"({_span(f'{pct.min():.3f}', f'{pct.max():.3f}')}% of the model)"
                                     if len(trn) else tables.DASH],
            ["Optimizer steps per run", (", ".join(map(str, steps)) or tables.DASH) + (
                "; baselines: " + ", ".join(f"{k} {', '.join(map(str, v)) or tables.DASH}"
                                            for k, v in sorted(base_steps.items())) if base_steps else "")],
            ["Seeds", f"{', '.join(map(str, seeds))} (configurations aggregated by {how}; [min–max] over seeds)"]]),
        *([["Training", "none: every run evaluates a base model as stored (no seeds, no trainable parameters)"]]
          if eval_only else []),
        ["Device", "; ".join(dev) or tables.DASH],
        ["Wall time", _wall(ok)],
        ["Software", ", ".join(f"{k} {v}" for k, v in (records[-1].get("versions") or {}).items()
                               if k in ("torch", "transformers", "peft", "bitsandbytes"))],
        ["Code", ", ".join(sorted(set(str(g) for g in ok["git"].dropna()))) or tables.DASH],
        ["Runs", ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))],
    ]
    return tables.md_table(["", ""], rows, ["l", "l"])


def _wall(ok: pd.DataFrame) -> str:
    """The ok runs' own wall times (each process from its start to its record: load, training, evaluation), summed,
    and the longest; a launcher's start-up and what ran beside the runs are not in it."""
    t = ok["total_s"].dropna().astype(float) if "total_s" in ok else pd.Series(dtype=float)
    if t.empty:
        return tables.DASH
    return (f"{t.sum() / 60:.1f} min over {len(t)} runs (the runs' own times, summed; longest run "
            f"{t.max() / 60:.1f} min)")


def _span(lo: str, hi: str) -> str:
    """"lo–hi", or one value where both ends print alike."""
    return lo if lo == hi else f"{lo}–{hi}"


def evaluation_only(runs: pd.DataFrame) -> bool:
    """True when no run of the experiment trained anything (e.g. QLoRA Table 2: each data type evaluated as is)."""
    ok = runs[runs["status"] == "ok"] if len(runs) else runs
    return bool(len(ok)) and not ok["trained"].fillna(True).astype(bool).any()


def weights_note(records: list[dict]) -> str:
    """What the 'full-precision' weights of each model really are, where it matters: a model converted from a
    quantized GGUF file holds dequantized 4-bit values, so its fp32 rows are not a genuine 16/32-bit model."""
    notes = {}
    for r in records:
        src, name = str(_cfg(r, "model", "source", default="") or ""), _cfg(r, "model", "name")
        if src.startswith("gguf:"):
            quant = next((q for q in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0") if q in src), "a quantized type")
            notes[name] = (f"{name}: converted from a {quant} GGUF file ({src.split(':')[-1]}), so its \"fp32\" "
                           f"weights are dequantized {quant} values: its full-precision rows are a 4/5/8-bit model's "
                           "values, and quantizing it again re-quantizes already-quantized weights")
    return "; ".join(notes[k] for k in sorted(notes))


def _describe(row: dict, dtype: bool = False) -> str:
    m = tables.METHOD_LABELS.get(row["method"], row["method"])
    if row["targets"] != "-":
        m += f" on {tables.targets_label(row['targets'])}, r={int(row['r'])}"
    if dtype and pd.notna(row.get("compute_dtype")):
        m += f", {row['compute_dtype']} compute"
    return (f"{m} ({tables.TASK_LABELS.get(row['task'], row['task'])} {tables.ours(row)}, peak "
            f"{tables.num(row['peak_mb'], 0)} MiB, {tables.human(row['trainable'])} trainable, "
            f"{tables.num(row['tokens_per_s'], 0)} tokens/s)")


def recommendation(agg: pd.DataFrame) -> list[str]:
    """The question users ask: which configuration, and what does it cost? Per task and model: the best, and the
    cheapest configurations whose metric is within the tolerance of the best."""
    out = []
    dt = "compute_dtype" in agg and agg["compute_dtype"].dropna().nunique() > 1
    for (task, model), g in agg.dropna(subset=["value"]).groupby(["task", "model"]):
        if len(g) < 2 or not bool(g["higher_better"].iloc[0]) or not bool(g["trained"].fillna(True).all()):
            continue  # evaluation-only grids (a loss or perplexity headline) have their own table
        best = g.loc[g["value"].idxmax()].to_dict()
        near = g[g["value"] >= best["value"] - claim_checks.TOLERANCE]
        light = near.loc[near["peak_mb"].astype(float).idxmin()].to_dict()
        small = near.loc[near["trainable"].astype(float).idxmin()].to_dict()
        out.append(f"- **{tables.TASK_LABELS.get(task, task)}, {model}** — best: {_describe(best, dt)}.")
        if light["group"] != best["group"]:
            out.append(f"  Least memory within {claim_checks.TOLERANCE:.0f} point of it: {_describe(light, dt)}.")
        if small["group"] not in (best["group"], light["group"]):
            out.append(f"  Fewest trainable parameters within {claim_checks.TOLERANCE:.0f} point: "
                       f"{_describe(small, dt)}.")
    return out


def baseline_records(store) -> list[dict]:
    """Every baseline run in the store (method.baseline set), of any experiment: reports compare with them."""
    out = []
    for name in store.experiments():
        out += [r for r in store.records(name) if frame.baseline_name(r) in frame.BASELINES]
    return out


def with_baselines(records: list[dict], agg: pd.DataFrame, extra: list[dict] = (), how: str = "median"):
    """(agg with each configuration's best baseline attached, the baselines' aggregate): baselines from these
    records and `extra` (other experiments' baseline runs), one record per config hash."""
    pool = {r.get("config_hash"): r for r in [*extra, *records] if frame.baseline_name(r) in frame.BASELINES}
    chosen, _ = frame.latest_per_config(list(pool.values()))
    base = frame.aggregate(frame.runs_frame(chosen), how) if chosen else pd.DataFrame()
    return frame.attach_baselines(agg, base), base


def baselined(chosen: list[dict], runs: pd.DataFrame, how: str, extra: list[dict] = ()):
    """(aggregate, baselines' aggregate): with each configuration's best baseline attached, except in an
    evaluation-only experiment (QLoRA Table 2: stored data types scored as they are), where a baseline for
    fine-tuning means nothing and every configuration is evidence."""
    agg = frame.aggregate(runs, how)
    if evaluation_only(runs):
        return agg, pd.DataFrame()
    return with_baselines(chosen, agg, extra, how)


def experiment_configs(name: str) -> list[str]:
    """The conf/experiment/ configs whose runs are recorded under experiment `name` (their experiment_name)."""
    conf = Path(__file__).resolve().parents[2] / "conf" / "experiment"
    out = []
    for p in sorted(conf.glob("*.yaml")):
        try:
            if str((yaml.safe_load(p.read_text()) or {}).get("experiment_name")) == name:
                out.append(p.stem)
        except (OSError, yaml.YAMLError):
            continue
    return out


def reproduce(name: str) -> str:
    """How to rerun an experiment's runs: its experiment configs, or (an experiment_name given on the command line,
    which no config sets) each run's own overrides."""
    for prefix, extra in (("confirm/", " ARGS=--confirm"), ("search/", "")):  # set by harness.search
        if name.startswith(prefix):
            return f"Reproduce: `make search SEARCH={name[len(prefix):]}{extra}`."
    found = experiment_configs(name)
    if not found:
        return (f"Reproduce: no config in conf/experiment/ sets experiment_name={name} (it was given on the command "
                "line): each run's overrides are in its `.hydra/overrides.yaml` (a sweep job's whole command in its "
                "`command.txt`).")
    cmds = " and ".join(f"`python -m harness.run -m +experiment={e}`" for e in found)
    paper = (Path(__file__).resolve().parents[2] / "conf" / "at_scale" / name / "paper.yaml").is_file()
    make = (f"`make sweep EXPERIMENT={name}`" + (" (add `SCALE=paper` for the paper's scale)" if paper else
                                                  " (local scale only)")) if found == [name] else cmds
    return f"Reproduce: {make}."


def committed_usable(out_root: Path) -> dict[str, bool] | None:
    """{task_key: usable for claims} from the committed sanity report (<out_root>/sanity/summary.json), for a results
    store that holds no sanity runs itself (a fresh clone regenerating a report): the verdicts make sanity measured
    stay the gate. None when there is no such report."""
    import json

    from harness.report.claims import task_key

    js = out_root / "sanity" / "summary.json"
    if not js.is_file():
        return None
    tasks = (json.loads(js.read_text()).get("tasks") or {}).values()
    found = CommittedVerdicts({task_key(t["task"], t["model"], t.get("pair_encoding")): bool(t["usable_for_claims"])
                               for t in tasks})
    return found or None


class CommittedVerdicts(dict):
    """make sanity's verdicts read from its committed report rather than from runs in the results store."""


def gate(usable: dict[str, bool] | None, chosen: list[dict]) -> dict[str, bool] | None:
    """make sanity's verdicts per task, plus those of tasks it has not checked, judged by its rule on the
    experiment's own baseline runs (sanity.own_usable); None when make sanity has not run (nothing is gated)."""
    if usable is None:
        return None
    from harness.report.sanity import own_usable

    return {**usable, **own_usable(chosen, usable)}


def render_experiment(name: str, records: list[dict], out_root: Path, plots: bool = True,
                      baselines: list[dict] = (), usable: dict[str, bool] | None = None) -> Path:
    """Write <out_root>/<name>/README.md (and plots). Returns the README path. `baselines`: baseline records of
    other experiments to compare with (this experiment's own are always used). `usable`: which local tasks make
    sanity shows usable for claims (sanity.usable_tasks); None: no sanity run, claims are not gated."""
    chosen, superseded = frame.latest_per_config(records)
    runs = frame.runs_frame(chosen)
    table = _cfg(chosen[0], "report", "table")
    how = _cfg(chosen[0], "report", "aggregate", default="median")
    agg, base = baselined(chosen, runs, how, baselines)
    pv = paper_values()
    paper = pv.get(table) if table else None
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    own: dict[str, bool] = {}  # tasks make sanity has not checked, judged on this experiment's own baseline runs

    lines = [f"# {name}" + (f": {paper['source']}" if paper else ": a grid of runs"), ""]
    lines += [f"Generated by `python -m harness.report` from {len(records)} result records "
              f"({len(chosen)} distinct configurations × seeds). Do not edit: rerun `make report`. "
              f"{reproduce(name)}", ""]
    if paper:
        lines += [f"**Mirrors** {paper['source']}: {paper['description'].strip()}", "",
                  f"**The paper's claim:** {paper['claim'].strip()}", ""]
    lines += ["## Scale we ran at", "", scale_table(chosen, runs, agg), ""]
    note = _cfg(max(chosen, key=lambda r: str(r.get("finished_at") or "")), "report", "note")
    if note:
        lines += [f"Note: {note}", ""]
    if agg.empty:
        lines += ["No run of this experiment finished ok yet.", ""]
    else:
        if paper and table in paper_tables.MIRRORS:
            lines += [f"## {paper['source']} — ours (paper)", "",
                      "Cells: ours (the paper's value). Our models, data sizes and steps are the scale above, "
                      "so compare the pattern across columns, not absolute values.", "",
                      paper_tables.MIRRORS[table](agg, paper), ""]
        pairs = set(zip(agg["task"], agg["split"]))
        used = base[[(t, sp) in pairs for t, sp in zip(base["task"], base["split"])]] if len(base) else base
        if len(used):
            n_below = int((agg["vs_baseline"] == frame.BELOW).sum())
            lines += ["## Baselines", "",
                      "Each fine-tuned configuration is compared with the best baseline measured on the same task, "
                      "eval split and examples (and model): majority class or mean, the untrained model (zero-shot), "
                      "and a frozen backbone with a trained head (head only). A configuration below it is marked "
                      f"{tables.BELOW_MARK} and is not evidence for any claim; \"clearly above\" = the 95% "
                      "t-interval of the difference, paired by seed where both have the seed, lies above 0; "
                      "\"above, within noise\" = above on average but that interval reaches 0. Where lower is better (a loss, a "
                      "perplexity), \"above\" means lower and \"below\" higher.", "",
                      tables.baselines_table(used), "",
                      f"{n_below} of {int((~agg['baseline'].isin(frame.BASELINES)).sum())} fine-tuned "
                      "configurations are below their best baseline." if agg["vs_baseline"].notna().any() else
                      "No fine-tuned configuration here has a baseline on its task and split.", ""]
        rec_lines = recommendation(frame.evidence(agg))
        if rec_lines:
            lines += ["## Which configuration, at what cost", ""] + rec_lines + [
                "", "At our scale and seeds (above); differences inside the seed spread are not evidence.", ""]
        gated = gate(usable, chosen)
        own = {k: v for k, v in (gated or {}).items() if k not in (usable or {})}
        found = claim_checks.check(table, frame.evidence(agg), gated)
        lines += ["## Claims checked", ""]
        for key, ok_ in own.items():
            lines += [f"{key.removesuffix('/-')} is not in make sanity's report: whether fine-tuning clearly beats its "
                      f"baselines there is judged by the same rule on this experiment's own baseline runs: "
                      f"**{'usable' if ok_ else 'not usable'} for claims**.", ""]
        if usable is None:
            lines += ["make sanity has not run in this results store: no claim below is gated on its task being "
                      "shown learnable (reports/sanity/).", ""]
        elif isinstance(usable, CommittedVerdicts):
            lines += ["Claims on what fine-tuning reaches are gated on make sanity's verdicts, read from the committed "
                      "reports/sanity/summary.json (its runs are not in this results store).", ""]
        lines += [c.markdown() for c in found] or ["No claim of the paper can be tested with these runs."]
        lines += ["", STATS_NOTE if not evaluation_only(runs) else
                  "Evaluation only: one deterministic evaluation per stored data type of the same examples. Where "
                  "the runs saved per-example scores (a classifier's or regressor's predictions; each answer's "
                  "NLL and token count for perplexity), a type beats another when the paired bootstrap interval "
                  "over the examples excludes 0; where they did not (older records), the numbers are shown and "
                  "left \"not resolved\": the sampling error of the evaluation set is not measured.", ""]
        lines += ["## All configurations", "",
                  f"Ours (final) = the {how} over seeds of the final evaluation, [min–max over seeds]; the mean's "
                  "interval is Student-t (n-1 degrees of freedom); failures are counted, never hidden (they are "
                  "included in the statistics, except failed runs, which have no metric).", "",
                  tables.all_configs(agg), ""]
        if plots:
            from harness.report.plots import draw_all

            made = draw_all(runs, agg, out)
            if made:
                lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in made] + [""]
    bad = runs[runs["status"] != "ok"]
    if len(bad):
        lines += ["## Failed runs", "", "These configurations have no ok record; `make sweep` retries them.", "",
                  tables.md_table(["Record", "Status", "Error"], [
                      [f"`{r['path']}`", r["status"], str(r["error"] or "").replace("|", "\\|").splitlines()[0][:200]
                       if r["error"] else ""] for _, r in bad.iterrows()], ["l", "l", "l"]), ""]
    if superseded:
        lines += [f"{len(superseded)} earlier record(s) of configurations that later finished ok (retries) are "
                  "not counted.", ""]
    path = out / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    write_summary(out / "summary.json", name, runs, agg, found if not agg.empty else [], how, table, own)
    return path


STATS_NOTE = ("How verdicts are decided (harness/report/stats.py): differences are paired by seed (every "
              "configuration's seed s draws the same training subset), with a 95% Student-t interval; with one seed, "
              "a paired bootstrap over evaluation examples where both runs saved predictions, else not resolved. "
              "\"Beats\" holds when the interval lies above 0; \"matches within delta\" is an equivalence test (the "
              "90% interval inside ±delta: two one-sided tests at 5%); \"matches or exceeds\" a one-sided "
              "non-inferiority test at 5%. A claim made of k comparisons (\"at every rank\", \"every data type\") "
              "holds when every part holds at those levels, and fails only when a part fails at the Bonferroni "
              "level (the 1 - 0.05/k interval). Configurations below their best baseline are not evidence.")

SUMMARY_COLUMNS = ["task", "model", "method", "baseline", "targets", "r", "alpha", "lr", "metric", "split",
                   "train_examples", "eval_examples", "steps", "n", "value", "mean", "median", "sd", "ci_lo", "ci_hi",
                   "min", "max", "best", "values", "failed", "collapsed", "seeds_below", "baseline_value",
                   "baseline_method", "vs_baseline", "vs_baseline_diff", "trainable", "trainable_pct", "peak_mb",
                   "tokens_per_s", "train_s", "compute_dtype", "device"]


def _plain(v):
    """A JSON-safe value: NaN/NA -> None, numpy scalars -> Python."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def write_summary(path: Path, name: str, runs: pd.DataFrame, agg: pd.DataFrame, found: list, how: str,
                  table: str | None, own_usable: dict[str, bool] | None = None) -> Path:
    """summary.json beside a report: every configuration's numbers (the cells of its tables), every claim with
    its verdict, difference, interval and n, and `own_usable`: the tasks make sanity has not checked, judged usable
    for claims or not by its rule on this experiment's own baseline runs (the sanity page lists them)."""
    import json

    ok = runs[runs["status"] == "ok"] if len(runs) else runs
    doc = {
        "experiment": name, "mirrors": table, "aggregate": how,
        "scale": sorted(set(str(s) for s in ok["scale"].dropna())) if len(ok) else [],
        "cpu": sorted(set(str(s) for s in ok["cpu"].dropna())) if len(ok) else [],
        "configurations": [{c: _plain(r.get(c)) for c in SUMMARY_COLUMNS if c in r}
                           for r in (agg.to_dict("records") if not agg.empty else [])],
        "claims": [c.as_dict() for c in found],
        "own_usable": dict(own_usable or {}),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_index(store, out_root: Path, base_recs: list[dict] | None = None,
                usable: dict[str, bool] | None = None) -> Path:
    """reports/README.md: every experiment in the store, what it mirrors, its runs and its claims' verdicts.
    `base_recs`: the store's baseline records, when the caller has read them already."""
    pv = paper_values()
    rows, claim_rows = [], []
    base_recs = baseline_records(store) if base_recs is None else base_recs
    for name in store.experiments():
        if name.startswith("search/"):
            continue  # listed under "Searches" below
        recs = store.records(name)
        if not recs or not (out_root / name / "README.md").exists():
            continue
        chosen, _ = frame.latest_per_config(recs)
        runs = frame.runs_frame(chosen)
        table = _cfg(chosen[0], "report", "table")
        how = _cfg(chosen[0], "report", "aggregate", default="median")
        agg, _ = baselined(chosen, runs, how, base_recs)
        found = [c for c in claim_checks.check(table, frame.evidence(agg), gate(usable, chosen)) if c.paper]
        scale = ", ".join(sorted(set(str(s) for s in runs["scale"].dropna()))) or tables.DASH
        verdicts = [c.verdict for c in found]
        counts = runs["status"].value_counts().to_dict()
        rows.append([f"[{name}]({name}/README.md)", pv[table]["source"] if table in pv else tables.DASH, scale,
                     ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), _count(verdicts)])
        claim_rows += [[f"[{name}]({name}/README.md)", c.source, c.claim, f"**{c.verdict}**",
                        c.evidence.replace("|", "\\|"), scale] for c in found]
    rows += _carried_rows(out_root / "README.md", {r[0] for r in rows}, out_root)
    rows.sort(key=lambda r: r[0])
    claim_rows += _carried_claims(out_root, {r[0] for r in claim_rows}, {r[0] for r in rows})
    analyses, analysis_claims = _analyses(out_root)
    claim_rows += analysis_claims
    claim_rows.sort(key=lambda r: (r[0], r[1]))
    searches = [[f"[{n.split('/', 1)[1]}]({n}/README.md)", str(len(store.records(n)))]
                for n in store.experiments() if n.startswith("search/") and (out_root / n / "README.md").exists()]
    searches += _carried_searches(out_root / "README.md", {r[0] for r in searches}, out_root)
    text = "\n".join(["# Reports", "", "Generated by `make report` from the result records; one folder per experiment.",
                      "", tables.md_table(["Experiment", "Mirrors", "Scale", "Runs", "Paper claims here"],
                                          rows, ["l"] * 5), "",
                      "No two reports share a run: a run's config hash includes its experiment's name, so the same "
                      "configuration in two grids (e.g. Wq,Wv at r=4 in the Table 5 and Table 6 grids) runs once for "
                      "each and their verdicts are independent measurements. Baseline runs are the exception: every "
                      "report compares with the best baseline of its task from any experiment (make sanity).", "",
                      "## Every paper claim checked", "",
                      "Verdicts: holds / fails / not resolved, decided as each report's \"Claims checked\" says "
                      "(harness/report/stats.py); the deciding numbers are A − B with its 95% interval.", "",
                      tables.md_table(["Report", "Source", "Claim", "Verdict", "Deciding numbers", "Scale"],
                                      claim_rows, ["l"] * 6) if claim_rows else "No paper claim is checked yet.", ""]
                     + (["## Searches (Optuna studies, `make search`)", "",
                         tables.md_table(["Study", "Trial records"], searches, ["l", "r"]), ""] if searches else [])
                     + (["## Adapter analyses (LoRA section 7, `make analyze`)", "",
                         "analysis/<experiment> reads the saved adapters of that experiment's runs: it shares "
                         "them with its report (analysis/lora_table6 with lora_table6), so its claims and that "
                         "report's rest on the same runs.", "",
                         tables.md_table(["Analysis", "Adapters", "Paper claims here"], analyses, ["l", "r", "l"]),
                         ""] if analyses else []))
    path = out_root / "README.md"
    out_root.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _analyses(out_root: Path) -> tuple[list[list[str]], list[list[str]]]:
    """reports/analysis/<experiment>/summary.json (python -m harness.analyze): index rows and claim rows."""
    import json

    rows, claims = [], []
    for js in sorted((out_root / "analysis").glob("*/summary.json")):
        doc = json.loads(js.read_text())
        link = f"[analysis/{js.parent.name}](analysis/{js.parent.name}/README.md)"
        found = [c for g in doc.get("groups") or [] for c in g.get("claims") or []]
        rows.append([link, str(doc.get("runs", "")), _count([c["verdict"] for c in found])])
        claims += [[link, c["source"], c["claim"], f"**{c['verdict']}**", c["numbers"].replace("|", "\\|"), "local"]
                   for c in found]
    return rows, claims


def _count(verdicts: list[str]) -> str:
    from harness.report import stats

    if not verdicts:
        return tables.DASH
    return (f"{verdicts.count(stats.HOLDS)} hold, {verdicts.count(stats.FAILS)} fail, "
            f"{verdicts.count(stats.UNRESOLVED)} not resolved")


def _carried_claims(out_root: Path, have: set[str], listed: set[str]) -> list[list[str]]:
    """Claims of listed reports whose records are not in this store, from their summary.json."""
    import json

    out = []
    for link in sorted(listed - have):
        name = link[1:link.index("]")]
        js = out_root / name / "summary.json"
        if not js.is_file():
            continue
        doc = json.loads(js.read_text())
        scale = ", ".join(doc.get("scale") or []) or tables.DASH
        out += [[link, c.get("source", ""), c["claim"], f"**{c['verdict']}**", c["evidence"].replace("|", "\\|"),
                 scale] for c in doc.get("claims") or [] if c.get("source") and c["source"] != claim_checks.SANITY_BOUND]
    return out


def _carried_rows(index: Path, have: set[str], out_root: Path) -> list[list[str]]:
    """Rows of the existing index for report folders whose records are not in this store (reports committed from
    another machine's runs): they stay listed, as they were, while their folder exists."""
    if not index.is_file():
        return []
    out = []
    for line in index.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("[") and cells[0] not in have:
            name = cells[0][1:cells[0].index("]")]
            if not name.startswith(("search/", "analysis/")) and (out_root / name / "README.md").is_file():
                out.append(cells)
    return out


def _carried_searches(index: Path, have: set[str], out_root: Path) -> list[list[str]]:
    """Rows of the existing index's "Searches" table for studies whose records are not in this store, while their
    report folder exists (as _carried_rows does for experiments)."""
    if not index.is_file():
        return []
    out = []
    for line in index.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("[") and "](search/" in cells[0] and cells[0] not in have:
            target = cells[0][cells[0].index("](") + 2:-1]
            if (out_root / target).is_file():
                out.append(cells)
    return out


def _render_search(name: str, recs: list[dict], store, out_root: Path) -> None:
    from harness.report.search import render_search

    study = name.split("/", 1)[1]
    url = next(((r.get("tags") or {}).get("storage") for r in reversed(recs) if (r.get("tags") or {}).get("storage")),
               None)
    if not url or "***" in url:
        print(f"{name}: the study's storage is not recorded (or has a password): "
              f"python -m harness.search search.study={study} search.storage=URL --report-only")
        return
    try:
        print(render_search(study, url, store, out_root))
    except Exception as e:  # a storage that is gone: the trials' records are still in the store
        print(f"{name}: study not readable from {url}: {type(e).__name__}: {e}")


def main(argv: list[str] | None = None) -> int:
    from harness.store import Store

    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.environ.get("HARNESS_OUTPUT_ROOT", "outputs"), help="output root (records)")
    ap.add_argument("--out", default="reports", help="where reports/<experiment>/ are written")
    ap.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), ap))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store = Store(args.root)
    rep = store.sync()
    for path, err in rep.corrupt:
        print(f"skipped unreadable record {path}: {err}")
    names = args.experiment or store.experiments()
    base_recs = baseline_records(store)
    from harness.report.sanity import usable_tasks

    usable = usable_tasks(store.records("sanity")) or committed_usable(Path(args.out))
    if not names:
        print(f"no result records under {args.root}: run `make run` or `make sweep` first")
        return 1
    for name in names:
        recs = store.records(name)
        if not recs:
            print(f"{name}: no records under {args.root}")
            continue
        if name.startswith("search/"):  # an Optuna study's trials: reports/search/<study>/ from the study
            _render_search(name, recs, store, Path(args.out))
            continue
        if _cfg(recs[-1], "report", "table") == "sanity":  # fine-tuning vs its baselines, per task
            from harness.report.sanity import render as render_sanity

            path = render_sanity(recs, Path(args.out))
        else:
            path = render_experiment(name, recs, Path(args.out), plots=not args.no_plots, baselines=base_recs,
                                     usable=usable)
        failed = [r for r in frame.latest_per_config(recs)[0] if r.get("status") != "ok"]
        print(f"{path}: {len(recs)} records, {len(failed)} failed")
        for r in failed:
            print(f"  {r.get('status')}: {r['_path']}: {str(r.get('error', ''))[:200]}")
    if any(n.startswith("memory_") for n in names):
        from harness.report.memory import render as render_memory

        print(render_memory(store, Path(args.out)))
    print(write_index(store, Path(args.out), base_recs, usable))
    return 0
