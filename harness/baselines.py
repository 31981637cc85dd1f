"""Baselines that are not trained the way fine-tuning methods are (conf/method/majority.yaml, zero_shot.yaml).

- majority: no model; the train split's majority class (or mean label, for regression) predicted for every eval
  example. A constant has no correlation: Pearson and Spearman are 0 by definition (harness.metrics).
- zero_shot of a two-class bi-encoder: the untrained encoder's cosine with one threshold, the one that classifies
  the training pairs best (`fit_cosine_threshold`, which also starts every trained two-class bi-encoder there).
  The bi-encoder regression's zero-shot score needs nothing: its cosine.
head_only is an ordinary run with a frozen backbone (harness.methods.apply).
"""

from __future__ import annotations

import numpy as np

from harness.config import is_regression
from harness.metrics import majority_baseline


def majority_record(cfg, data, rec: dict) -> None:
    """Fill a run record for the majority baseline, in the shape every run's record has."""
    task = cfg.task
    names = list(task.metrics)
    labels = data.train["label"]
    final = {s: majority_baseline(names, labels, df["label"], is_regression(task)) for s, df in data.evals.items()}
    split = next(iter(data.evals))
    head = names[0]
    values = np.asarray(labels, dtype=float)
    rec["params"] = {"trainable": 0, "total": 0, "trainable_pct": 0.0, "adapter": 0}
    rec["model"] = {"name": None, "head": "majority"}
    rec["method"] = {"name": cfg.method.name, "baseline": "majority", "adapter": False, "trained": False, "lr": None}
    rec["majority"] = ({"predicts": float(values.mean())} if is_regression(task)
                       else {"predicts": int(np.bincount(values.astype(int)).argmax())})
    rec["metrics"] = {"headline": {"split": split, "metric": head}, "final": final, "best": final, "best_step": 0,
                      "history": [{"step": 0, "metrics": final}],
                      "train_loss": {"first": None, "last": None, "mean": None, "log": [], "nonfinite": 0}}
    rec["memory"] = {"peak_mb": None}
    rec["throughput"] = None
    rec["steps"] = 0


def best_threshold(cos: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy on these pairs): predict class 1 when cos > threshold; the threshold is the midpoint
    between two neighbouring sorted cosines that classifies the most pairs right (ties: the lower one)."""
    order = np.argsort(cos, kind="stable")
    c, y = cos[order], labels[order].astype(int)
    n = len(c)
    # threshold below index k: pairs [0, k) predicted 0, [k, n) predicted 1
    right0 = np.concatenate([[0], np.cumsum(y == 0)])  # class-0 pairs below
    right1 = np.concatenate([np.cumsum((y == 1)[::-1])[::-1], [0]])  # class-1 pairs at or above
    correct = right0 + right1
    k = int(np.argmax(correct))
    if k == 0:
        t = float(c[0]) - 1e-6
    elif k == n:
        t = float(c[-1]) + 1e-6
    else:
        t = float((c[k - 1] + c[k]) / 2)
    return t, float(correct[k]) / n


FIT_PAIRS = 500  # training pairs the cosine threshold is fit on (a seeded sample; all when fewer)


def fit_cosine_threshold(model, train_ds, cfg, tokenizer) -> dict:
    """Set a two-class bi-encoder's threshold (every CosineHead in the model: peft keeps a trained copy beside the
    original) to the one that classifies up to FIT_PAIRS training pairs best with the model as it is now (before
    training: the zero-shot classifier, where every method starts). Returns what the record keeps."""
    import torch

    from harness.models import CosineHead
    from harness.train import make_collator

    collate = make_collator(cfg, tokenizer)
    cols = ["input_ids", "attention_mask", "input_ids_b", "attention_mask_b", "labels", "length"]
    rows = train_ds.select_columns([c for c in cols if c in train_ds.column_names])
    if len(rows) > FIT_PAIRS:
        rows = rows.shuffle(seed=int(cfg.train.seed)).select(range(FIT_PAIRS))
    rows = rows.sort("length") if "length" in train_ds.column_names else rows  # similar lengths per batch: less padding
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cos, labels = [], []
    was_training = model.training
    model.eval()
    bs = int(cfg.train.eval_batch_size)
    with torch.no_grad():
        for i in range(0, len(rows), bs):
            batch = collate([rows[j] for j in range(i, min(i + bs, len(rows)))])
            u = inner.encode(batch["input_ids"], batch["attention_mask"]).float()
            v = inner.encode(batch["input_ids_b"], batch["attention_mask_b"]).float()
            cos.append(torch.nn.functional.cosine_similarity(u, v, dim=-1).numpy())
            labels.append(batch["labels"].numpy())
    model.train(was_training)
    t, acc = best_threshold(np.concatenate(cos), np.concatenate(labels))
    heads = [m for m in model.modules() if isinstance(m, CosineHead)]
    with torch.no_grad():
        for h in heads:
            h.threshold.fill_(t)
    return {"threshold": t, "train_accuracy": acc, "fit_on": len(rows), "heads": len(heads)}
