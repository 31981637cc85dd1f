"""Baselines that are not trained the way fine-tuning methods are (conf/method/majority.yaml, zero_shot.yaml).

- majority: no model; the train split's majority class (or mean label, for regression) predicted for every eval
  example. A constant has no correlation: Pearson and Spearman are 0 by definition (harness.metrics).
- zero_shot of a two-class bi-encoder: the untrained encoder's cosine with one threshold, the one that classifies
  the training pairs best (`fit_cosine_threshold`, which also starts every trained two-class bi-encoder there).
  The bi-encoder regression's zero-shot score needs nothing: its cosine.
head_only is an ordinary run with a frozen backbone (harness.methods.apply).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.config import is_regression
from harness.metrics import majority_baseline

if TYPE_CHECKING:
    from harness.config import Config


def majority_record(cfg: Config, data, rec: dict) -> None:
    """Fill a run record for the majority baseline, in the shape every run's record has (harness/record.py)."""
    from harness.record import Memory, MethodInfo, Metrics, ModelInfo, Params

    task = cfg.task
    names = list(task.metrics)
    labels = data.train["label"]
    final = {s: majority_baseline(names, labels, df["label"], is_regression(task)) for s, df in data.evals.items()}
    split = next(iter(data.evals))
    head = names[0]
    values = np.asarray(labels, dtype=float)
    rec["params"] = Params.of(trainable=0, total=0, trainable_pct=0.0, adapter=0).as_dict()
    rec["model"] = ModelInfo.of(name=None, head="majority").as_dict()
    rec["method"] = MethodInfo.of(name=cfg.method.name, baseline="majority", adapter=False, trained=False,
                                  lr=None).as_dict()
    rec["majority"] = ({"predicts": float(values.mean())} if is_regression(task)
                       else {"predicts": int(np.bincount(values.astype(int)).argmax())})
    rec["metrics"] = Metrics.of(headline={"split": split, "metric": head}, final=final, best=final, best_step=0,
                                history=[{"step": 0, "metrics": final}],
                                train_loss={"first": None, "last": None, "mean": None, "log": [],
                                            "nonfinite": 0}).as_dict()
    rec["memory"] = Memory.of(peak_mb=None).as_dict()
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
COSINE_CACHE = "cache/zero_shot_cosines"  # under paths.output_root: the untrained encoder's cosines of the fit pairs


def encoder_digest(backbone) -> str | None:
    """A digest of the function `backbone` computes in eval mode, from its weights: every parameter and buffer
    (names without peft's `.base_layer`), LoRA's A matrices left out while every B is still zero (the adapter then
    adds exactly 0). None when the weights do not tell: a quantized weight (bitsandbytes' packed types keep their
    scales outside the tensor), a LoRA B already trained, another kind of adapter weight."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in [*backbone.named_parameters(), *backbone.named_buffers()]:
        leaf = name.split(".")
        if any(p.startswith("lora_") for p in leaf):
            if any(p in ("lora_A", "lora_embedding_A") for p in leaf):
                continue
            if any(p in ("lora_B", "lora_embedding_B") for p in leaf) and not bool(t.detach().count_nonzero()):
                continue
            return None
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or not (  # a bitsandbytes type is a subclass
                t.is_floating_point() or t.dtype in (torch.int64, torch.int32)):  # integer buffers: position ids
            return None
        h.update(f"{name.replace('.base_layer', '')}:{t.dtype}:{tuple(t.shape)}:{t.device};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _source_digest() -> str:
    """Our code between the weights and the cosines (encoding and pooling, collation, this fit), as it is now."""
    import hashlib

    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in ("models.py", "train.py", "baselines.py"))
                          ).hexdigest()


def _cosine_cache_path(cfg: Config, backbone, rows, bs: int) -> Path | None:
    """Where the untrained encoder's cosines of these fit pairs are kept, keyed by everything they depend on (the
    weights, the pairs' token ids, the batch and padding, the kernels that run: library versions, threads, CPU, ISA
    limits, our code's source); None when the weights cannot be fingerprinted (`encoder_digest`) or no output
    root is set."""
    import hashlib
    import json
    import os

    import torch
    import transformers

    from harness.records import host

    root = cfg.paths.output_root
    digest = encoder_digest(backbone)
    if not root or digest is None:
        return None
    ids = hashlib.sha256()
    for col in ("input_ids", "input_ids_b"):
        for x in rows[col]:
            ids.update(np.asarray(x, dtype=np.int64).tobytes() + b"|")
    key = {
        "weights": digest, "pairs": ids.hexdigest(), "batch_size": bs,
        "pad_to_multiple_of": cfg.train.pad_to_multiple_of, "pooling": str(cfg.model.pooling),
        "code": _source_digest(), "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "cpu": host().get("cpu"),
        "isa": [os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")],
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return Path(root) / COSINE_CACHE / f"{name}.npy"


def fit_cosine_threshold(model, train_ds, cfg: Config, tokenizer) -> dict:
    """Set a two-class bi-encoder's threshold (every CosineHead in the model: peft keeps a trained copy beside the
    original) to the one that classifies up to FIT_PAIRS training pairs best with the model as it is now (before
    training: the zero-shot classifier, where every method starts). Returns what the record keeps.

    The cosines of an encoder whose weights are the untrained ones (zero-shot, head only, full fine-tuning and LoRA
    before their first step: `encoder_digest` is the same) are computed once per output root and seed and read
    back by the other runs (`_cosine_cache_path`): bit for bit the values a run would compute, as the key holds
    everything they depend on. In make sanity this spares 15 of 20 encodings of 500 pairs (~14 s each)."""
    import torch

    from harness.models import CosineHead
    from harness.records import write_bytes_atomic
    from harness.train import make_collator

    collate = make_collator(cfg, tokenizer)
    cols = ["input_ids", "attention_mask", "input_ids_b", "attention_mask_b", "labels", "length"]
    rows = train_ds.select_columns([c for c in cols if c in train_ds.column_names])
    if len(rows) > FIT_PAIRS:
        rows = rows.shuffle(seed=int(cfg.train.seed)).select(range(FIT_PAIRS))
    rows = rows.sort("length") if "length" in train_ds.column_names else rows  # similar lengths per batch: less padding
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    bs = int(cfg.train.eval_batch_size)
    path = _cosine_cache_path(cfg, inner.backbone, rows, bs)
    labels = np.asarray(rows["labels"])
    cached = None
    if path is not None and path.exists():
        try:
            cached = np.load(path)
        except (OSError, ValueError):  # a damaged file is recomputed and replaced
            cached = None
        if cached is not None and cached.shape != (len(rows),):
            cached = None
    if cached is not None:
        cos = cached
    else:
        parts = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, len(rows), bs):
                batch = collate([rows[j] for j in range(i, min(i + bs, len(rows)))])
                u = inner.encode(batch["input_ids"], batch["attention_mask"]).float()
                v = inner.encode(batch["input_ids_b"], batch["attention_mask_b"]).float()
                parts.append(torch.nn.functional.cosine_similarity(u, v, dim=-1).numpy())
        model.train(was_training)
        cos = np.concatenate(parts)
        if path is not None:
            import io

            buf = io.BytesIO()
            np.save(buf, cos)
            write_bytes_atomic(path, buf.getvalue())
    t, acc = best_threshold(cos, labels)
    heads = [m for m in model.modules() if isinstance(m, CosineHead)]
    with torch.no_grad():
        for h in heads:
            h.threshold.fill_(t)
    return {"threshold": t, "train_accuracy": acc, "fit_on": len(rows), "heads": len(heads),
            "cosines": "off" if path is None else "cached" if cached is not None else "computed"}
