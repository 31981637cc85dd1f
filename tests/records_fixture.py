"""Synthetic result records shaped exactly like harness.run's, for store and report tests."""

from __future__ import annotations

from harness.records import SCHEMA_VERSION, config_hash

TASK_METRIC = {"stsb": "pearson", "sst2": "accuracy", "mrpc": "accuracy", "cola": "matthews_correlation",
               "rte": "accuracy", "alpaca": "perplexity", "wikisql": "logical_form_accuracy", "e2e": "bleu"}


def make_record(*, experiment="exp", task="stsb", model="minilm_l6", method="lora", targets="qv", r=8, alpha=8,
                seed=1, value=0.5, peak_mb=500.0, tokens_per_s=1000.0, table=None, aggregate="median",
                status="ok", lr=3e-3, train_examples=2000, finished_at="2026-11-22T10:00:00", error=None,
                extra: dict | None = None) -> dict:
    """`extra`: top-level record keys to set (e.g. mmlu_before/mmlu_after, model.linear_storage)."""
    adapter = method != "full"
    quant = {"qlora_int8": "int8", "qlora_fp4": "fp4", "qlora_fp4_dq": "fp4", "qlora_nf4": "nf4",
             "qlora_nf4_dq": "nf4"}.get(method, "none")
    config = {
        "model": {"name": model}, "task": {"name": task, "metrics": [TASK_METRIC[task]], "train_size": train_examples},
        "method": {"name": method, "adapter": adapter, "quant": quant, "lr_multiplier": 1.0 if adapter else 0.1},
        "lora": {"r": r, "alpha": alpha, "targets": targets}, "train": {"seed": seed, "lr": lr},
        "paths": {"output_root": "outputs"}, "scale": "local", "experiment_name": experiment, "tags": {},
        "report": {"table": table, "aggregate": aggregate},
    }
    metric = TASK_METRIC[task]
    total = 22_713_216
    trainable = (r * 2 * 384 * len(targets) * 6 + 385) if adapter else total
    rec = {
        "schema_version": SCHEMA_VERSION, "run_id": f"{method}_{targets}_{r}_{seed}", "experiment": experiment,
        "status": status, "config_hash": config_hash(config), "config": config, "tags": {}, "seed": seed,
        "finished_at": finished_at,
        "task": {"name": task, "train_examples": train_examples, "eval_examples": {"validation": 1500}},
        "params": {"trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total},
        "method": {"name": method, "compute_dtype": "bfloat16", "lr": lr * (1.0 if adapter else 0.1),
                   "lora": {"r": r, "alpha": alpha, "targets": targets} if adapter else None},
        "host": {"device": "cpu", "cpu": "Test CPU", "gpu": None},
        "versions": {"torch": "2.13.0+cpu", "transformers": "5.23.0", "peft": "0.21.2", "bitsandbytes": "0.50.2"},
        "git": {"commit": "0123456789abcdef"}, "steps": 63,
    }
    if status == "ok":
        rec.update({
            "metrics": {"headline": {"split": "validation", "metric": metric},
                        "final": {"validation": {metric: value}}, "best": {"validation": {metric: value}}},
            "memory": {"peak_mb": peak_mb}, "throughput": {"tokens_per_s": tokens_per_s},
            "times": {"train_s": 30.0, "total_s": 45.0},
            "adapter": {"bytes": trainable * 4} if adapter else None,
        })
    else:
        rec["error"] = error or "RuntimeError: boom"
    rec.update(extra or {})
    return rec
