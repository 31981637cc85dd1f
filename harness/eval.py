"""Re-score a finished run from its saved adapter:  python -m harness.eval RUN_DIR [--split NAME]

Reads RUN_DIR/record.json, rebuilds the run's base model as the record says (model, method, quantization, compute
dtype, seed), puts the saved adapter (RUN_DIR/adapter: LoRA weights and the trained head) on it, evaluates the
run's evaluation splits as the run did at its end, and prints each metric beside the record's final value. Exit
status 0 when every metric matches (exactly where the computation is deterministic: the same CPU kinds and
threads; `--tolerance` otherwise), 1 when one differs, 2 when the run cannot be re-scored (no saved adapter: full
fine-tuning and the baselines save no weights). Nothing is written into the results store.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from harness.cli import key_value_args


class EvalError(RuntimeError):
    pass


def run_config(rec: dict, overrides: dict | None = None):
    """The run's typed config from its record (train.max_steps=0: nothing trains)."""
    from harness.config import from_record

    return from_record(rec["config"], {"train.max_steps": 0, **(overrides or {})})


def load_run(run_dir: str | Path, data_dir: str | None = None):
    """(record, typed config, model with the saved adapter on it, tokenizer, compute dtype) of a finished adapter
    run; EvalError naming what is missing when it cannot be rebuilt. Nothing is written."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from harness import models
    from harness.records import RECORD_NAME, read_record
    from harness.runner import build_model, num_labels

    run_dir = Path(run_dir)
    if not (run_dir / RECORD_NAME).is_file():
        raise EvalError(f"{run_dir}: no {RECORD_NAME} (give the directory of one run)")
    rec = read_record(run_dir / RECORD_NAME)
    if rec.get("status") != "ok":
        raise EvalError(f"{run_dir}: the run's status is {rec.get('status')!r}, not ok: it has no final adapter")
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    if not rec.get("adapter") or not weights.is_file():
        raise EvalError(f"{run_dir}: no saved adapter ({weights} is missing): only adapter runs save their weights "
                        f"(method {rec['config']['method']['name']!r}; train.save_adapter=true)")
    cfg = run_config(rec, {"paths.data_dir": data_dir} if data_dir else None)
    torch.set_num_threads(int(cfg.train.threads) or torch.get_num_threads())
    try:
        model_path = models.resolve(cfg.model.source, cfg.paths.cache_dir, cfg.model.name)
        tokenizer = models.load_tokenizer(model_path, cfg.model)
        model, dtype, _, _ = build_model(cfg, model_path, num_labels(cfg.task))
    except (OSError, models.ModelError) as e:
        raise EvalError(f"{run_dir}: its base model {cfg.model.name!r} ({cfg.model.source}) cannot be loaded: "
                        f"{str(e).splitlines()[0]}") from None
    try:
        result = set_peft_model_state_dict(model, load_file(str(weights)))
    except (KeyError, RuntimeError, ValueError) as e:  # a tensor the model lacks, or of another shape
        raise EvalError(f"{weights}: its saved tensors fit no module of the rebuilt model ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}): the record's config does not rebuild the model that was "
                        "trained") from None
    extra = list(getattr(result, "unexpected_keys", []) or [])
    if extra:
        raise EvalError(f"{weights}: {len(extra)} saved tensors fit no module of the rebuilt model "
                        f"(e.g. {extra[0]}): the record's config does not rebuild the model that was trained")
    return rec, cfg, model, tokenizer, dtype


def reevaluate(run_dir: str | Path, data_dir: str | None = None) -> dict:
    """{split: {metric: value}} of the run's saved adapter, evaluated as the run's final evaluation was."""
    from harness.config import is_causal
    from harness.runner import _causal_evaluator, _prepare_causal, _prepare_classification
    from harness.tasks import find_data_dir, load_task
    from harness.train import train_and_evaluate

    rec, cfg, model, tokenizer, dtype = load_run(run_dir, data_dir)
    causal = is_causal(cfg.task)
    data = load_task(cfg.task, find_data_dir(cfg.paths.data_dir), seed=cfg.train.seed, need_train=not causal)
    prep = _prepare_causal(cfg, data, tokenizer) if causal else _prepare_classification(cfg, data, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        final_evaluate = _causal_evaluator(cfg, model, tokenizer, data, prep, dtype, Path(tmp), {}) if causal else None
        out = train_and_evaluate(model, tokenizer, prep["train"], prep["evals"], cfg, tmp, dtype=dtype,
                                 label_norm=prep["norm"] if not causal else None, final_evaluate=final_evaluate)
    return out["metrics"]["final"]


def compare(got: dict, recorded: dict, tolerance: float = 0.0) -> list[tuple[str, str, float, float | None, bool]]:
    """(split, metric, re-scored, recorded, matches) for every re-scored number."""
    rows = []
    for split, vals in got.items():
        for k, v in vals.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            r = (recorded.get(split) or {}).get(k)
            ok = r is not None and (v == r or (math.isfinite(v) and abs(v - r) <= tolerance * max(1.0, abs(r))))
            rows.append((split, k, float(v), r, ok))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run's directory (it holds record.json and adapter/)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="relative difference allowed (0: exact; e.g. 1e-6 on another CPU kind or thread count)")
    p.add_argument("--data-dir", default=None, help="the data folder, if not where the run read it")
    a = p.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), p))
    try:
        got = reevaluate(a.run_dir, a.data_dir)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from harness.records import RECORD_NAME, read_record

    recorded = read_record(Path(a.run_dir) / RECORD_NAME)["metrics"]["final"]
    rows = compare(got, recorded, a.tolerance)
    for split, k, v, r, ok in rows:
        print(f"{split:<12} {k:<24} re-scored {v:.6g}  recorded {'-' if r is None else format(r, '.6g')}  "
              f"{'matches' if ok else 'DIFFERS'}")
    print(json.dumps({"matches": all(ok for *_, ok in rows)}))
    return 0 if rows and all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
