"""Result records -> tidy tables: one row per run, then one row per configuration (seeds aggregated).

Everything a report shows comes from here; nothing reads training code. Metric values are put on the
papers' x100 scale (accuracy, Matthews correlation, Pearson all in points).
"""

from __future__ import annotations

import hashlib
import json
import math

import pandas as pd

from harness.metrics import higher_is_better
from harness.record import (Adapter, Memory, MethodInfo, Metrics, ModelInfo, Params, RunRecord, TaskInfo,
                            Throughput)
from harness.records import hashed_config, identity
from harness.store import headline

# the columns that identify a configuration apart from its seed
CONFIG_KEYS = ["task", "model", "method", "targets", "r", "alpha", "lr", "train_examples"]


def _get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def group_key(rec: dict) -> str:
    """Hash of the config without its seed: records that differ only by seed share it."""
    cfg = hashed_config(rec.get("config") or {})
    train = dict(cfg.get("train") or {})
    train.pop("seed", None)
    cfg["train"] = train
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def latest_per_config(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(one record per computation (`identity`): the latest ok one, else the latest; the records superseded)."""
    by_hash: dict[str, list[dict]] = {}
    for r in records:
        by_hash.setdefault(identity(r), []).append(r)
    chosen, superseded = [], []
    for recs in by_hash.values():
        recs = sorted(recs, key=lambda r: str(r.get("finished_at") or ""))
        ok = [r for r in recs if r.get("status") == "ok"]
        pick = ok[-1] if ok else recs[-1]
        chosen.append(pick)
        superseded += [r for r in recs if r is not pick]
    return chosen, superseded


def run_row(rec: dict) -> dict:
    """One run as a table row, read through the record's declared shape (harness/record.py)."""
    r = RunRecord.read(rec)
    cfg = r.config or {}
    method = r.method or MethodInfo()
    params = r.params or Params()
    model = r.model or ModelInfo()
    task = r.task or TaskInfo()
    metrics = r.metrics or Metrics()
    host = r.provenance.host or {}
    lora = method.lora or {}
    adapter = bool(_get(cfg, "method", "adapter", default=True))
    metric, value = headline(rec)
    metric = metric or (_get(cfg, "task", "metrics") or [None])[0]
    split = (metrics.headline or {}).get("split")
    best = metrics.value("best") if split else None
    higher = higher_is_better(metric) if metric else True
    scale = 100.0 if higher else 1.0  # accuracy-like metrics in points; loss and perplexity as they are
    fake = model.fake_quant or {}
    storage = model.linear_storage or {}
    return {
        "experiment": r.experiment,
        "status": r.status,
        "config_hash": r.config_hash,
        "group": group_key(rec),
        "task": _get(cfg, "task", "name"),
        "model": _get(cfg, "model", "name"),
        "method": _get(cfg, "method", "name"),
        "baseline": baseline_name(rec),
        # a sentence-pair encoding is a classifier's; a causal-LM task (generation, multiple choice) has none
        "pair_encoding": None if _get(cfg, "task", "kind") in ("generation", "multiple_choice") else (
            _get(cfg, "task", "pair_encoding") or task.pair_encoding),
        "quant": _get(cfg, "method", "quant"),
        "compute_dtype": method.compute_dtype,
        "targets": (lora.get("targets") if lora else _get(cfg, "lora", "targets")) if adapter else "-",
        "r": (lora.get("r") if lora else None) if adapter else None,
        "alpha": (lora.get("alpha") if lora else None) if adapter else None,
        "lr": method.lr if "lr" in (rec.get("method") or {}) else _get(cfg, "train", "lr"),
        "seed": r.seed if "seed" in rec else _get(cfg, "train", "seed"),
        "metric": metric,
        "split": split,
        "higher_better": higher,
        "value": None if value is None else value * scale,
        # every metric of the final evaluation on the headline split, as the record holds it (0-1 or raw)
        "final_metrics": dict((metrics.final or {}).get(split) or {}) if split else {},
        "curve": _curve(metrics.history, split, metric, scale),
        "best_value": None if best is None else best * scale,
        "trainable": params.trainable,
        "total": params.total,
        "trainable_pct": params.trainable_pct,
        "peak_mb": (r.memory or Memory()).peak_mb,
        "tokens_per_s": (r.throughput or Throughput()).tokens_per_s,
        "train_s": (r.times or {}).get("train_s"),
        "total_s": (r.times or {}).get("total_s"),
        "adapter_bytes": (r.adapter or Adapter()).bytes,
        "trained": True if method.trained is None else method.trained,
        "mmlu_before": _pct((r.mmlu_before or {}).get("accuracy")),
        "mmlu_after": _pct((r.mmlu_after or {}).get("accuracy", (r.mmlu or {}).get("accuracy"))),
        "gen_tokens_per_s": _gen_rate(r.generation),
        "linear_bytes": storage["weight_bytes"] + storage["constant_bytes"] if storage else None,
        "bits_per_param": storage.get("bits_per_param"),
        # a simulated data type (harness/fakequant.py): the mean per-layer relative reconstruction error
        "fake_quant": fake.get("type"),
        "rel_error": fake.get("rel_error_mean"),
        "bits_simulated": fake.get("bits_per_param_simulated"),
        "bits_per_param_blocks": storage.get("bits_per_param_blocks"),
        "train_examples": task.train_examples,
        "eval_examples": sum((task.eval_examples or {}).values()) or None,
        "steps": r.steps,
        "device": host.get("device"),
        "cpu": cpu_label(host),
        "gpu": (host.get("gpu") or {}).get("name"),
        "torch": (r.provenance.versions or {}).get("torch"),
        "git": ((r.provenance.git or {}).get("commit") or "")[:10] or None,
        "scale": cfg.get("scale"),
        "finished_at": r.finished_at,
        "error": r.error,
        "path": r.store_path,
        "dir": r.store_dir,
    }


def cpu_label(host: dict) -> str | None:
    """The CPU and the kernels torch ran on it: "AMD EPYC, AVX2 kernels (emulating an AVX2-only CPU)"."""
    if not host.get("cpu"):
        return None
    label = host["cpu"] + (f", {host['cpu_capability']} kernels" if host.get("cpu_capability") else "")
    emulated = (host.get("isa_limits") or {}).get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2"
    return label + (" (emulating an AVX2-only CPU)" if emulated else "")


def baseline_name(rec: dict) -> str:
    """The baseline a record is (majority, zero_shot, head_only), or "none" for a fine-tuning run."""
    return _get(rec, "config", "method", "baseline", default=_get(rec, "method", "baseline")) or "none"


def _curve(history, split, metric, scale: float) -> dict:
    """{optimizer step: value} of the headline metric over the run's evaluations (train.eval_every), x100 scale."""
    out = {}
    for h in history or []:
        v = _get(h, "metrics", split, metric)
        if v is not None and h.get("step") is not None:
            out[int(h["step"])] = float(v) * scale
    return out


def _pct(v):
    return None if v is None else 100.0 * v


def _gen_rate(generation: dict | None):
    """Generated tokens per second over every evaluated split (None when the run generated nothing)."""
    gen = generation or {}
    tokens = sum(g.get("new_tokens") or 0 for g in gen.values())
    secs = sum(g.get("seconds") or 0 for g in gen.values())
    return tokens / secs if secs > 0 else None


def runs_frame(records: list[dict]) -> pd.DataFrame:
    rows = [run_row(r) for r in records]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in ("r", "alpha", "train_examples", "trainable", "total", "steps", "seed"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def aggregate(runs: pd.DataFrame, how: str = "median") -> pd.DataFrame:
    """One row per configuration (ok runs only): the metric aggregated over seeds the paper's way (`value`: median
    or mean), its spread (sample standard deviation; 0 for one seed), n, mean, median, sd and the 95% t-interval
    of the mean (`ci_lo`, `ci_hi`: harness.report.stats), the per-seed values and run directories (for paired
    comparisons), `failed` (runs of the configuration that ended without a metric: diverged or errored; not in
    the statistics), the best evaluation during training (`best`, the LoRA paper's protocol) beside the final
    one, and the mean of the cost columns."""
    from harness.report import stats

    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    failed = runs[runs["status"] != "ok"].groupby("group").size().to_dict()
    out = []
    for key, g in ok.groupby("group", sort=False):
        vals = g["value"].dropna().astype(float)
        first = g.iloc[0]
        summ = stats.summarize(list(vals))
        best = g["best_value"].dropna().astype(float)
        row = {c: first[c] for c in ("experiment", "task", "model", "method", "baseline", "pair_encoding", "quant", "compute_dtype", "targets",
                                     "r", "alpha", "lr", "metric", "split", "train_examples", "eval_examples",
                                     "total", "trainable", "trainable_pct", "device", "scale", "higher_better",
                                     "trained", "bits_per_param", "bits_per_param_blocks", "linear_bytes",
                                     "fake_quant", "rel_error", "bits_simulated")}
        row.update({
            "group": key,
            "value": float(vals.median() if how == "median" else vals.mean()) if len(vals) else math.nan,
            "spread": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            "min": float(vals.min()) if len(vals) else math.nan,
            "max": float(vals.max()) if len(vals) else math.nan,
            "seeds": int(g["seed"].nunique()),
            "n": summ.n, "mean": summ.mean, "median": summ.median, "sd": summ.sd,
            "ci_lo": summ.lo, "ci_hi": summ.hi,
            "values": _by_seed(g, "value", float),
            # {metric: {seed: value}}: every metric of the final evaluation (a table with several metric columns)
            "metric_values": _metrics_by_seed(g),
            "dirs": _by_seed(g, "dir", str),
            "failed": int(failed.get(key, 0)),
            "peaks": _by_seed(g, "peak_mb", float),
            "mmlu_values": _by_seed(g, "mmlu_after", float),
            "best": float(best.median() if how == "median" else best.mean()) if len(best) else math.nan,
            "peak_mb": g["peak_mb"].astype(float).mean(),
            "tokens_per_s": g["tokens_per_s"].astype(float).mean(),
            "train_s": g["train_s"].astype(float).mean(),
            "adapter_bytes": g["adapter_bytes"].astype(float).mean(),
            "steps": g["steps"].astype(float).mean(),
            "mmlu_before": g["mmlu_before"].astype(float).mean(),
            "mmlu_after": g["mmlu_after"].astype(float).mean(),
            "mmlu_after_spread": float(g["mmlu_after"].astype(float).std(ddof=1)) if len(g) > 1 else 0.0,
            "gen_tokens_per_s": g["gen_tokens_per_s"].astype(float).mean(),
            "curve": _mean_curve(g["curve"]),
        })
        out.append(row)
    return pd.DataFrame(out)


def _metrics_by_seed(g: pd.DataFrame) -> dict:
    out: dict = {}
    for s, m in zip(g["seed"], g["final_metrics"]):
        if s is pd.NA or not isinstance(m, dict):
            continue
        for name, v in m.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                out.setdefault(name, {})[int(s)] = float(v)
    return out


def _by_seed(g: pd.DataFrame, column: str, cast) -> dict:
    """{seed: value} of one column over a configuration's runs, leaving out runs without a seed or a value."""
    return {int(s): cast(v) for s, v in zip(g["seed"], g[column])
            if s is not pd.NA and v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""}


BASELINES = ("majority", "zero_shot", "head_only")
# a fine-tuned configuration against its best baseline (vs_baseline)
BELOW, CLEAR, WITHIN, ONE_SEED = "below baseline", "clearly above", "above, within noise", "above (one seed)"
COLLAPSE_MARGIN = 1.0  # points: a seed within this of the majority class / mean predictor learned nothing


def attach_baselines(agg: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Each fine-tuned configuration with the best baseline measured on the same task, eval split and number of
    eval examples (and the same model, except for the majority class, which has none): its value, method, seeds
    and experiment, the difference to it (`vs_baseline_diff`: paired over seeds where both ran the same seeds,
    else Welch; harness.report.stats) and `vs_baseline`:
    - "below baseline": the configuration's aggregate is below the baseline's; it is never evidence for a claim;
    - "clearly above": the 95% interval of the difference is above 0;
    - "above, within noise": otherwise; "above (one seed)": one seed cannot tell noise from a gain.
    Failures are counted per configuration, never hidden by an aggregate: `seeds_below` (seeds under the best
    baseline's value) and `collapsed` (seeds within COLLAPSE_MARGIN points of the majority class / mean
    predictor, i.e. a constant predictor). Where lower is better (loss, perplexity) the best baseline is the
    lowest, "below" means worse (higher) and "above" better (lower); the difference shown is ours minus the baseline."""
    from harness.report import stats

    if agg.empty:
        return agg
    out = agg.copy()
    for c in ("baseline_value", "baseline_method", "baseline_seeds", "baseline_experiment", "vs_baseline",
              "vs_baseline_diff", "seeds_below", "collapsed", "majority_value"):
        out[c] = None
    if base is None or base.empty:
        return out
    base = base[base["baseline"].isin(BASELINES)].dropna(subset=["value"])
    for i, row in out.iterrows():
        if row.get("baseline") in BASELINES or pd.isna(row["value"]):
            continue
        up = bool(row["higher_better"])
        m = ((base["task"] == row["task"]) & (base["split"] == row["split"])
             & (base["eval_examples"].astype(float) == float(row["eval_examples"] or -1))
             & ((base["model"] == row["model"]) | (base["baseline"] == "majority")))
        cand = base[m & (base["metric"] == row["metric"])]
        if cand.empty:
            continue
        b = cand.loc[cand["value"].astype(float).idxmax() if up else cand["value"].astype(float).idxmin()]
        vals = row.get("values") or {}
        maj = cand[cand["baseline"] == "majority"]
        if len(maj) and up:
            floor = float(maj["value"].astype(float).max()) + COLLAPSE_MARGIN
            out.at[i, "majority_value"] = float(maj["value"].astype(float).max())
            out.at[i, "collapsed"] = sum(1 for v in vals.values() if v <= floor)
        out.at[i, "seeds_below"] = sum(1 for v in vals.values() if (v < float(b["value"]) if up else
                                                                    v > float(b["value"])))
        d = stats.compare(vals, b.get("values") or {})  # ours - baseline, shown as is
        better = d if up else stats.compare(b.get("values") or {}, vals)  # > 0: ours is the better
        diff = (float(row["value"]) - float(b["value"])) * (1 if up else -1)
        if diff < 0:
            verdict = BELOW
        elif int(row["seeds"]) < 2:
            verdict = ONE_SEED
        elif stats.beats(better) == stats.HOLDS:
            verdict = CLEAR
        else:
            verdict = WITHIN
        out.at[i, "baseline_value"] = float(b["value"])
        out.at[i, "baseline_method"] = b["method"]
        out.at[i, "baseline_seeds"] = int(b["seeds"])
        out.at[i, "baseline_experiment"] = b["experiment"]
        out.at[i, "vs_baseline"] = verdict
        out.at[i, "vs_baseline_diff"] = None if d is None else d.text()
    return out


def evidence(agg: pd.DataFrame) -> pd.DataFrame:
    """The configurations a claim may rest on: fine-tuned ones not below their best baseline."""
    if agg.empty or "baseline" not in agg:
        return agg
    keep = ~agg["baseline"].isin(BASELINES)
    if "vs_baseline" in agg:
        keep &= agg["vs_baseline"] != BELOW
    return agg[keep]


def _mean_curve(curves) -> dict:
    """Mean over seeds at each step every seed evaluated."""
    curves = [c for c in curves if isinstance(c, dict) and c]
    if not curves:
        return {}
    steps = set.intersection(*(set(c) for c in curves))
    return {s: sum(c[s] for c in curves) / len(curves) for s in sorted(steps)}


def pareto_front(df: pd.DataFrame, x: str = "peak_mb", y: str = "value") -> pd.Series:
    """True for configurations no other beats on both: lower x (memory) and higher y (metric)."""
    pts = df[[x, y]].astype(float).to_numpy()
    flags = []
    for i, (xi, yi) in enumerate(pts):
        dominated = any((xj <= xi and yj >= yi) and (xj < xi or yj > yi) for j, (xj, yj) in enumerate(pts) if j != i)
        flags.append(not dominated)
    return pd.Series(flags, index=df.index)
