"""`make bench`: lora-harness's training path against the recipe most users copy, in one process, on the same data,
model, method and settings. Writes reports/bench/results_<tag>.json (every measurement; one file per CPU class:
avx2, bf16, ...) and reports/bench/README.md (bench/report.py, every results file a section).

Paths (`PATHS`), each one change to the path above it:
  seed      the seed recipe: texts tokenized with padding="max_length" to train.max_seq_len, then
            `default_data_collator` (sequence classification, as transformers' run_glue.py with pad_to_max_length)
            or `DataCollatorForLanguageModeling(mlm=False)` (causal LM); a `Trainer` with default arguments
            (fp32, random order, logging every 500 steps), torch's dropout.
  dynamic   ours without length grouping, in fp32, with torch's dropout: only padding to the batch's longest differs.
  grouped   + length grouping.
  fast_dropout  + harness.dropout's masks (train.fast_dropout, the default) for the model's own dropout.
  ours      harness.train.make_trainer exactly as `python -m harness.run` trains: + autocast in `compute` (auto:
            bf16 where the CPU has AVX512-BF16 or AMX; elsewhere fp32) and our attention (model.attn_implementation
            =sdpa_cpu, the default; the paths above run transformers' sdpa, as the seed recipe does).
  ours_1thread  ours on one thread instead of all cores (the thread-count lever).
Levers (`LEVERS`), each one change to ours, kept in the harness only if it helps and changes no maths beyond a
stated tolerance: LoRA dropout 0.1 (the recipes' value; the rows above use 0 so that losses can be compared) with
torch's and with our dropout, torch's fused AdamW, twice the batch at half the steps (same examples), and
torch.compile of the model (inductor; the compile time counts in the path's wall time), the frozen base stored in bf16
(bf16 sections), transformers' eager attention instead of scaled_dot_product_attention, and transformers' sdpa
attention as it is instead of ours (sdpa_cpu).
Every path trains the same model (harness.runner.build_model with the same seed: same weights, same LoRA init),
on the same examples and token ids, with the same objective (classification: cross entropy of the head;
causal LM: next-token loss on every real token, which is what DataCollatorForLanguageModeling trains), learning
rate, batch size and number of steps. Only the pipeline differs.

Measured per path: real (non-pad) tokens per second over the steps after the first `WARMUP` (data loading,
forward, backward and optimizer step all inside the timed span), the held-out loss after training (fp32, same
examples for every path) and the model FLOP utilisation: training FLOPs per real token (`train_flops`, stated in
the report) x tokens/s / the dense matmul peak measured in this process with the same threads, in the dtype the
path computes in.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.cli import key_value_args

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
WARMUP = 2  # steps left out of the rate (first-shape kernel selection, allocator growth)


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    task: str
    batch_size: int
    max_seq_len: int
    steps: int
    lr: float
    heldout: int = 64  # held-out examples the final loss is computed on

    def overrides(self, method: str, path: str, seed: int = 0, compute: str = "auto") -> list[str]:
        # train=default: the cross-encoder setting every bench row measured, not the local recipes (the base default)
        batch, steps = (2 * self.batch_size, self.steps // 2) if path == "batch_x2" else (self.batch_size, self.steps)
        ov = {"model": self.model, "task": self.task, "method": method, "train": "default",
              "train.batch_size": batch, "train.max_seq_len": self.max_seq_len, "train.max_steps": steps,
              "train.lr": self.lr, "train.seed": seed, "task.train_size": self.batch_size * self.steps,
              "task.eval_size": self.heldout, "train.eval_every": 0, "train.warmup_ratio": 0,
              "train.weight_decay": 0, "lora.dropout": 0.0, "method.compute_dtype": compute}
        if path in ("seed", "dynamic", "grouped", "fast_dropout"):
            # no autocast; the seed QLoRA recipe keeps bnb_4bit_compute_dtype=bfloat16 (as peft's and the
            # QLoRA repository's examples do), which method.compute_dtype=auto gives on a bf16 CPU
            ov["method.compute_dtype"] = "auto" if (path == "seed" and method != "lora") else "fp32"
        if path in ("seed", "dynamic", "grouped"):
            ov["train.fast_dropout"] = False
        if path in ("seed", "dynamic", "grouped", "fast_dropout", "sdpa_attention"):
            ov["model.attn_implementation"] = "null"  # transformers' default attention (sdpa)
        if path in ("dynamic", "seed"):
            ov["train.group_by_length"] = False
        ov.update(LEVERS.get(path, {}))
        return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in ov.items()]


# STS-B (a task MiniLM learns at this scale) with run_glue.py's default max_seq_length (128), WikiSQL with our
# recipe's limit (recipe/default/wikisql.yaml). No warmup and no weight decay (the Trainer's defaults, which the seed
# recipe keeps), lora.dropout 0 so that the paths' losses on one batch can be compared exactly.
WORKLOADS = {
    "minilm": Workload("minilm_stsb", "minilm_l6", "stsb", batch_size=32, max_seq_len=128, steps=24, lr=1e-3),
    "smollm2": Workload("smollm2_wikisql", "smollm2_135m", "wikisql", batch_size=8, max_seq_len=256, steps=8,
                        lr=2e-3),
}
METHODS = ("lora", "qlora_nf4_dq")
# one change to ours each (the overrides it adds; compile: torch.compile of the model, in _run_path)
LEVERS = {
    "lora_dropout_torch": {"lora.dropout": 0.1, "train.fast_dropout": False},
    "lora_dropout_fast": {"lora.dropout": 0.1},
    "fused_adamw": {"train.optimizer": "adamw_fused"},
    "batch_x2": {},  # Workload.overrides: 2 x batch, steps / 2
    "compile": {},
    # frozen base weights stored in bf16: autocast then casts no weight per matmul (bf16 sections only: without
    # native bf16 a bf16 base is emulated, ~10x slower)
    "bf16_base": {"method.base_dtype": "bf16"},
    # transformers' eager attention (matmul, softmax, matmul) instead of scaled_dot_product_attention's kernels
    "eager_attention": {"model.attn_implementation": "eager"},
    # transformers' sdpa as it is (model.attn_implementation=null, set in Workload.overrides) instead of ours,
    # sdpa_cpu (harness/attention.py: fp32 attention on the CPU, explicit attention dropout with our masks)
    "sdpa_attention": {},
}
PATHS = ("seed", "dynamic", "grouped", "fast_dropout", "ours", "ours_1thread", *LEVERS)
LEVERS_FOR = ("lora",)  # the in-between paths and levers run by default for these methods only (QLoRA: seed, ours)


# ------------------------------------------------------------------------------------------- machine peak
def matmul_peak(dtype: torch.dtype, n: int = 2048, round_s: float = 1.0) -> float:
    """Dense `torch.matmul` FLOP/s of an n x n product in `dtype` on the current threads: the best of 3 rounds of
    `round_s` seconds each (at least 2 products a round). Timed by wall budget, not a fixed count: a dtype the CPU
    lacks (bf16 with AVX2 only) is emulated at ~1 GFLOP/s, and 30 products of 17 GFLOP would take minutes."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _seconds_per_call(lambda: a @ b, round_s, min_calls=2)


def _seconds_per_call(fn, round_s: float, min_calls: int = 3) -> float:
    """After one warm-up call, the best of 3 rounds of mean seconds per call (each round `round_s` long, at least
    `min_calls` calls)."""
    fn()
    best = float("inf")
    for _ in range(3):
        t, reps = time.perf_counter(), 0
        while reps < min_calls or time.perf_counter() - t < round_s:
            fn()
            reps += 1
        best = min(best, (time.perf_counter() - t) / reps)
    return best


# ------------------------------------------------------------------------------------------- FLOP count
def train_flops(model) -> dict:
    """Training FLOPs per real token from the linear layers that run per token: a frozen weight of n elements
    costs 2n forward + 2n for the input gradient (4n); a trained one adds 2n for its weight gradient (6n), so full
    fine-tuning is 6N and LoRA 4N_frozen + 6N_adapter. Attention-score products (O(seq) per token, <3% here),
    norms and activations are left out. The BERT pooler and peft's frozen copy of a trained head do not run."""
    frozen = trained = 0
    for (i, o, is_trained), count in linear_shapes(model).items():
        if is_trained:
            trained += count * i * o
        else:
            frozen += count * i * o
    return {"per_token": 4 * frozen + 6 * trained, "frozen_linear": frozen, "trained_linear": trained,
            "formula": "4 x frozen linear weights + 6 x trained linear weights, per real token"}


def linear_shapes(model) -> dict[tuple[int, int, bool], int]:
    """{(in_features, out_features, trained): how many} over the linear layers `train_flops` counts."""
    from collections import Counter

    shapes = Counter()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and "pooler" not in name and "original_module" not in name:
            shapes[(m.in_features, m.out_features, bool(m.weight.requires_grad))] += 1
    return dict(shapes)


def shape_ceiling(model, tokens: int, dtype: torch.dtype, round_s: float = 0.2) -> dict:
    """What torch's matmul kernels reach on this machine at the workload's own shapes: every linear layer that runs
    per token, its products timed alone as a training step runs them (forward X W^T; input gradient G W; for a
    trained weight also its gradient G^T X), with `tokens` rows (the mean real tokens per step, packed: no
    padding), operands already in `dtype` (no casts), nothing else (no attention, norms, optimizer, framework).
    The FLOPs `train_flops` counts for a step over that time is the best FLOP/s any training path could reach with
    these kernels: the MFU ceiling at these shapes."""
    total_s = flops = 0.0
    rows = []
    with torch.no_grad():
        for (i, o, trained), n in sorted(linear_shapes(model).items()):
            x, w, g = (torch.randn(tokens, i, dtype=dtype), torch.randn(o, i, dtype=dtype),
                       torch.randn(tokens, o, dtype=dtype))
            ops = [lambda: x @ w.t(), lambda: g @ w] + ([lambda: g.t() @ x] if trained else [])
            sec = sum(_seconds_per_call(op, round_s) for op in ops)
            f = 2.0 * tokens * i * o * len(ops)
            total_s += n * sec
            flops += n * f
            rows.append({"in": i, "out": o, "trained": trained, "count": n, "products": len(ops),
                         "seconds": sec, "flops_per_s": f / sec})
    return {"tokens": tokens, "dtype": "bf16" if dtype == torch.bfloat16 else "fp32", "flops": flops,
            "seconds": total_s, "flops_per_s": flops / total_s, "shapes": rows}


def measure_ceilings(res: dict, chosen_models) -> None:
    """res["ceiling"][workload]: `shape_ceiling` at the mean real tokens per step of ours (LoRA, seed 0) in the dtype
    ours computes in, as a share of the dense matmul peak measured beside it (in the same process, just before)."""
    peaks: dict = {}
    for mk in chosen_models:
        w = WORKLOADS[mk]
        ours = next((r for r in res["runs"] if r["workload"] == w.name and r["method"] == "lora"
                     and r["path"] == "ours" and r["seed"] == 0), None)
        if ours is None:
            continue
        p = prepare(w, "lora", "ours", 0, res.get("compute", "auto"))
        dtype = DTYPES[ours["compute_dtype"]]
        c = shape_ceiling(p["model"], round(ours["real_tokens"] / ours["steps"]), dtype)
        c["peak"] = _peak(peaks, ours["compute_dtype"])
        c["mfu"] = c["flops_per_s"] / c["peak"]
        c["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
        res.setdefault("ceiling", {})[w.name] = c
        log.info("%s: matmul ceiling at %d tokens per step, %s: %.0f GFLOP/s = %.1f%% of the peak", w.name,
                 c["tokens"], c["dtype"], c["flops_per_s"] / 1e9, 100 * c["mfu"])


# ------------------------------------------------------------------------------------------- data
def _texts(cfg, data) -> list[list[str]]:
    """Per example, the text fields a tokenizer gets: the task's fields (classification) or prompt + answer."""
    from harness.config import is_causal

    if is_causal(cfg.task):
        return [[p + a] for p, a in zip(data["prompt"], data["answer"])]
    return [[data[f].iloc[i] for f in cfg.task.text_fields] for i in range(len(data))]


def tokenized(cfg, data_df, tokenizer, *, seed_recipe: bool, norm=None):
    """The training set one path sees. Ours: harness.train.tokenize (classification) or harness.lm.encode_example
    with an empty prompt, i.e. the loss on every token (causal). Seed: tokenizer(..., padding="max_length")."""
    import datasets

    from harness.config import is_causal, is_regression

    n = cfg.train.max_seq_len
    causal = is_causal(cfg.task)
    if seed_recipe:
        texts = _texts(cfg, data_df)
        enc = tokenizer(*zip(*texts), padding="max_length", truncation=True, max_length=n)
        cols = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        if not causal:
            mean, std = norm or (0.0, 1.0)
            cols["labels"] = ([(float(x) - mean) / std for x in data_df["label"]] if is_regression(cfg.task)
                              else [int(x) for x in data_df["label"]])
        return datasets.Dataset.from_dict(cols)
    if causal:
        from harness.lm import encode_example

        rows = [encode_example(tokenizer, "", t[0], n, add_eos=False) for t in _texts(cfg, data_df)]
        for r in rows:
            r.pop("truncated")
        return datasets.Dataset.from_list(rows)
    from harness.train import tokenize

    return tokenize(data_df, tokenizer, list(cfg.task.text_fields), n, is_regression(cfg.task), norm)


class CountingCollator:
    """Wraps a collator; keeps each batch's real-token count (attention_mask sum) in order."""

    def __init__(self, inner):
        self.inner, self.tokens = inner, []

    def __call__(self, features):
        batch = self.inner(features)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def seed_collator(cfg, tokenizer):
    from transformers import DataCollatorForLanguageModeling, default_data_collator

    from harness.config import is_causal

    return DataCollatorForLanguageModeling(tokenizer, mlm=False) if is_causal(cfg.task) else default_data_collator


def ours_collator(cfg, tokenizer):
    """The collator harness.train.make_trainer uses."""
    from harness.train import make_collator

    return make_collator(cfg, tokenizer)


def batch_loss(model, batch) -> float:
    """The model's own loss on one collated batch, fp32, no autocast, no dropout."""
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def heldout_loss(cfg, model, tokenizer, ds, batch_size: int = 16) -> float:
    """Mean loss over the held-out examples (token-weighted for causal LMs), batches padded dynamically."""
    from harness.config import is_causal

    collate = ours_collator(cfg, tokenizer)
    model.eval()
    total = weight = 0.0
    keep = [c for c in ds.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            feats = [{k: r[k] for k in keep} for r in ds.select(range(i, min(i + batch_size, len(ds))))]
            batch = collate(feats)
            w = int((batch["labels"][:, 1:] != -100).sum()) if is_causal(cfg.task) else len(feats)
            total += float(model(**batch).loss) * w
            weight += w
    return total / weight


# ------------------------------------------------------------------------------------------- one path
class StepClock:
    """TrainerCallback: perf_counter at the end of every optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self):
                self.ends: list[float] = []

            def on_step_end(self, args, state, control, **kw):
                self.ends.append(time.perf_counter())

        return _Clock()


class OpProfile:
    """TrainerCallback: torch.profiler over optimizer steps [start, stop); `summary` gives the share of the CPU time
    in each kind of op: bitsandbytes' dequantization (4-bit bases dequantize every weight in every forward and
    backward on the CPU), matmuls, dropout's random draws, everything else."""

    KINDS = {"dequantize": ("dequantize",), "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"),
             "random draws": ("bernoulli", "aten::random_")}

    def __new__(cls, start: int, stop: int):
        from transformers import TrainerCallback

        class _Prof(TrainerCallback):
            def __init__(self):
                self.prof, self.events, self.seconds, self.t = None, None, None, None

            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == start:
                    self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    self.prof.__enter__()
                    self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == stop and self.prof is not None:
                    self.seconds = time.perf_counter() - self.t
                    self.prof.__exit__(None, None, None)
                    self.events = [(e.key, e.self_cpu_time_total) for e in self.prof.key_averages()]
                    self.prof = None

            def summary(self) -> dict | None:
                if not self.events:
                    return None
                total = sum(t for _, t in self.events) or 1.0
                out = {"steps": stop - start, "wall_s": self.seconds, "self_cpu_s": total / 1e6}
                rest = total
                for kind, keys in OpProfile.KINDS.items():
                    t = sum(v for k, v in self.events if any(x in k.lower() for x in keys))
                    out[kind] = t / total
                    rest -= t
                out["other"] = rest / total
                return out

        return _Prof()


def prepare(w: Workload, method: str, path: str, seed: int = 0, compute: str = "auto") -> dict:
    """Config, tokenizer, data and a freshly built model for one path (the same weights for every path)."""
    from harness import models
    from harness.config import compose, is_regression
    from harness.runner import build_model, num_labels
    from harness.tasks import find_data_dir, load_task
    from harness.train import label_norm

    cfg = compose(w.overrides(method, path, seed, compute))
    data = load_task(cfg.task, find_data_dir(cfg.paths.data_dir), seed=0)  # same examples for every path and seed
    model_path = models.resolve(cfg.model.source, cfg.paths.cache_dir, cfg.model.name)
    tokenizer = models.load_tokenizer(model_path, cfg.model)
    norm = label_norm(data.train) if is_regression(cfg.task) else None
    heldout_df = next(iter(data.evals.values()))
    model, dtype, _, _ = build_model(cfg, model_path, num_labels(cfg.task))
    return {
        "cfg": cfg, "tokenizer": tokenizer, "model": model, "dtype": dtype, "train_df": data.train, "norm": norm,
        "train": tokenized(cfg, data.train, tokenizer, seed_recipe=path == "seed", norm=norm),
        "heldout": tokenized(cfg, heldout_df, tokenizer, seed_recipe=False, norm=norm),
    }


def seed_trainer(p: dict, out_dir: str, collator, callbacks):
    """The seed recipe's Trainer: default arguments, the recipe's learning rate, batch size and steps."""
    from transformers import Trainer, TrainingArguments

    t = p["cfg"].train
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=t.batch_size, learning_rate=t.lr,
                             max_steps=t.max_steps, seed=t.seed, report_to=[], save_strategy="no",
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    return Trainer(model=p["model"], args=args, train_dataset=p["train"], data_collator=collator, callbacks=callbacks)


def run_path(w: Workload, method: str, path: str, seed: int = 0, compute: str = "auto",
             profile: bool = False) -> dict:
    threads = torch.get_num_threads()
    if path == "ours_1thread":  # the thread lever: ours on one core of the machine's
        torch.set_num_threads(1)
    try:
        return _run_path(w, method, "ours" if path == "ours_1thread" else path, seed, compute, profile) | {
            "path": path, "threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(threads)


def _compile(model):
    """torch.compile (inductor) of the transformers model inside peft's wrappers, shapes dynamic (every batch has
    its own length). Returns the undo (the held-out loss is computed eagerly, as for every path)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.forward = torch.compile(inner.forward, dynamic=True)
    return lambda: delattr(inner, "forward")


def _run_path(w: Workload, method: str, path: str, seed: int = 0, compute: str = "auto",
              profile: bool = False) -> dict:
    from harness.profile import Throughput
    from harness.train import make_trainer

    p = prepare(w, method, path, seed, compute)
    cfg, model, tokenizer = p["cfg"], p["model"], p["tokenizer"]
    flops = train_flops(model)
    steps = int(cfg.train.max_steps)
    undo = _compile(model) if path == "compile" else None
    loss0 = heldout_loss(cfg, model, tokenizer, p["heldout"]) if path == "seed" else None
    clock = StepClock()
    callbacks = [clock] + ([OpProfile(WARMUP, min(steps, WARMUP + 4))] if profile else [])
    with tempfile.TemporaryDirectory() as tmp:
        if path == "seed":
            collator = CountingCollator(seed_collator(cfg, tokenizer))
            trainer = seed_trainer(p, tmp, collator, callbacks)
        else:
            trainer = make_trainer(model, tokenizer, p["train"], {"heldout": p["heldout"]}, cfg, tmp,
                                   dtype=p["dtype"], meter=Throughput(WARMUP), callbacks=callbacks)
            collator = trainer.data_collator = CountingCollator(trainer.data_collator)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    if undo:
        undo()
    ends, toks = clock.ends, collator.tokens
    assert len(ends) == len(toks) == steps, (len(ends), len(toks), steps)
    timed_tokens = sum(toks[WARMUP:])
    timed_s = ends[-1] - ends[WARMUP - 1]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tps = timed_tokens / timed_s
    return {
        "workload": w.name, "model": w.model, "task": w.task, "method": method, "path": path, "seed": seed,
        # the dtype the frozen base's matmuls run in (autocast, or bitsandbytes' compute dtype): MFU's peak
        "compute_dtype": "bf16" if p["dtype"] == torch.bfloat16 else "fp32",
        "steps": steps, "batch_size": int(cfg.train.batch_size), "max_seq_len": w.max_seq_len,
        "fast_dropout": bool(cfg.train.fast_dropout), "lora_dropout": float(cfg.lora.dropout),
        "optimizer": str(cfg.train.optimizer), "compiled": path == "compile",
        "attn_implementation": cfg.model.attn_implementation,
        "real_tokens": sum(toks), "timed_real_tokens": timed_tokens, "timed_s": timed_s, "train_wall_s": wall,
        "tokens_per_s": tps, "step_s_median": statistics.median(b - a for a, b in zip(ends[WARMUP - 1:], ends[WARMUP:])),
        # tokens computed per step, pad included: fixed for the seed recipe, per batch otherwise (see real_tokens)
        "padded_tokens_per_step": float(w.batch_size * w.max_seq_len) if path == "seed" else None,
        "op_profile": callbacks[-1].summary() if profile else None,
        "train_loss_logged": losses,
        "heldout_loss_before": loss0, "heldout_loss_after": heldout_loss(cfg, model, tokenizer, p["heldout"]),
        "flops_per_token": flops["per_token"], "flops": flops, "achieved_flops": flops["per_token"] * tps,
    }


# ------------------------------------------------------------------------------------------- fixed cost
def fixed_cost(w: Workload) -> dict:
    """One `python -m harness.run` of 1 training step in a fresh process (model cache warm): wall time split
    into process start + config, imports, data (read + tokenize), model load, training, final evaluation."""
    with tempfile.TemporaryDirectory() as out:
        ov = [f"model={w.model}", f"task={w.task}", "method=lora", f"task.train_size={w.batch_size}",
              f"task.eval_size={w.heldout}", "train.max_steps=1", f"train.batch_size={w.batch_size}",
              f"paths.output_root={out}", "train.save_adapter=false"]
        if w.task == "wikisql":
            ov.append("task.max_new_tokens=32")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness.run", *ov], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        rec = json.loads(next(Path(out).rglob("record.json")).read_text())
    times = rec["times"]
    other = {k: times[k] for k in ("imports_s", "data_s", "load_s", "train_s", "final_eval_s")}
    other["process_start_and_config_s"] = wall - times["total_s"]
    other["wall_s"] = wall
    other["fixed_s"] = wall - times["train_s"] - times["final_eval_s"]
    return other


# ------------------------------------------------------------------------------------------- sharing the cores
SHARING_STEPS = 40


def sharing(steps: int = SHARING_STEPS) -> dict:
    """The default run (`make run`'s config, all threads) for `steps` steps in a fresh process alone, then two such
    processes at once (another seed each), with the OpenMP wait settings every run starts with (profile.OMP_ENV).
    Returns each run's training tokens/s (its record's) and the share of the solo rate each kept side by side."""
    def launch(out: str, seed: int):
        ov = [f"train.max_steps={steps}", f"train.seed={seed}", f"paths.output_root={out}", "train.save_adapter=false"]
        return subprocess.Popen([sys.executable, "-m", "harness.run", *ov], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def rate(out: str) -> float:
        return float(json.loads(next(Path(out).rglob("record.json")).read_text())["throughput"]["tokens_per_s"])

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, tempfile.TemporaryDirectory() as c:
        if launch(a, 0).wait():
            raise RuntimeError("the solo run failed")
        procs = [launch(b, 1), launch(c, 2)]
        if any(p.wait() for p in procs):
            raise RuntimeError("a side-by-side run failed")
        solo, pair = rate(a), [rate(b), rate(c)]
    from harness.profile import process_env

    return {"steps": steps, "solo_tokens_per_s": solo, "pair_tokens_per_s": pair,
            "kept": [x / solo for x in pair], "env": process_env(os.environ)}


# ------------------------------------------------------------------------------------------- driver
def machine() -> dict:
    from harness.methods import host_has_bf16

    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import bitsandbytes
    import peft
    import transformers

    try:
        amx = "amx_bf16" in open("/proc/cpuinfo").read().split()
    except OSError:
        amx = False
    return {"cpu": model, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "bf16_native": host_has_bf16(), "amx": amx, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__, "python": platform.python_version()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(WORKLOADS), help=f"comma list of {list(WORKLOADS)}")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    ap.add_argument("--paths", default="", help=f"comma list of {list(PATHS)} (default: all for "
                    f"{list(LEVERS_FOR)}, seed and ours otherwise)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench"))
    ap.add_argument("--skip", default="", help="comma list of paths to leave out of the default set")
    ap.add_argument("--no-fixed-cost", action="store_true")
    ap.add_argument("--no-sharing", action="store_true", help="skip the two-processes-at-once measurement")
    ap.add_argument("--compute", default="auto", choices=("auto", "fp32", "bf16"),
                    help="method.compute_dtype of ours and the levers (auto: bf16 with AMX or AVX512-BF16)")
    ap.add_argument("--ceiling-only", action="store_true", help="only (re)measure the matmul ceiling at each "
                    "workload's shapes into the existing results_<tag>.json (its ours runs give the tokens per step)")
    ap.add_argument("--tag", default="", help="the results file's name: results_<tag>.json (default: from the "
                    "CPU class: avx2 when ATEN_CPU_CAPABILITY=avx2, else the compute dtype)")
    a = ap.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), ap))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][bench] %(message)s")
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(os.cpu_count() or 1)
    chosen = {k: _choices(getattr(a, k), v, k) for k, v in (("models", WORKLOADS), ("methods", METHODS),
                                                            ("paths", PATHS))}
    skip = _choices(a.skip, PATHS, "skip")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = a.tag or ("avx2" if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2" else
                    a.compute if a.compute != "auto" else "auto")
    res = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "warmup_steps": WARMUP,
           "workloads": {k: asdict(WORKLOADS[k]) for k in chosen["models"]}, "runs": [], "fixed_cost": {},
           "compute": a.compute, "tag": tag, "levers": {k: v for k, v in LEVERS.items()},
           "env": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "GOMP_SPINCOUNT",
                                                  "OMP_WAIT_POLICY")}}
    name = f"results_{tag}.json"
    if a.ceiling_only:
        if not (out / name).is_file():
            raise SystemExit(f"--ceiling-only: {out / name} does not exist (run the bench with tag={tag} first)")
        res = json.loads((out / name).read_text())
        measure_ceilings(res, chosen["models"])
        _save(out, res, name)
        from bench.report import main as render_page

        render_page([str(out)])
        return
    res["peak_flops"] = {}  # per dtype, measured before the first path that computes in it
    for mk in chosen["models"]:
        w = WORKLOADS[mk]
        for method in chosen["methods"]:
            paths = chosen["paths"] or (PATHS if method in LEVERS_FOR else ("seed", "ours"))
            paths = [p for p in paths if (p != "bf16_base" or a.compute == "bf16") and p not in skip]
            # then a second seed of the two compared paths: what noise is
            for path, seed in [(p, 0) for p in paths] + [(p, 1) for p in ("seed", "ours") if p in paths]:
                # ours (seed 0) also under the op profiler, in its own pass: where the time goes
                try:
                    r = run_path(w, method, path, seed=seed, compute=a.compute)
                    if path == "ours" and seed == 0:
                        r["op_profile"] = run_path(w, method, path, seed=seed, compute=a.compute,
                                                   profile=True)["op_profile"]
                except Exception as e:  # one path's failure (a compiler missing, say) is recorded, not fatal
                    log.exception("%s %s %s seed %d failed", w.name, method, path, seed)
                    res.setdefault("failed", []).append({"workload": w.name, "method": method, "path": path,
                                                         "seed": seed, "error": f"{type(e).__name__}: {e}"})
                    _save(out, res, name)
                    continue
                r["mfu"] = r["achieved_flops"] / _peak(res["peak_flops"], r["compute_dtype"])
                res["runs"].append(r)
                log.info("%s %s %-8s seed %d: %7.0f tokens/s  held-out loss %.4f  MFU %.1f%%", w.name, method,
                         path, seed, r["tokens_per_s"], r["heldout_loss_after"], 100 * r["mfu"])
                _save(out, res, name)
        if not a.no_fixed_cost:
            res["fixed_cost"][w.name] = fixed_cost(w)
            _save(out, res, name)
    measure_ceilings(res, chosen["models"])
    _save(out, res, name)
    if not a.no_sharing:
        res["sharing"] = sharing()
        log.info("sharing: solo %.0f tokens/s, side by side %s", res["sharing"]["solo_tokens_per_s"],
                 res["sharing"]["pair_tokens_per_s"])
    res["peak_flops_after"] = {k: matmul_peak(DTYPES[k]) for k in res["peak_flops"]}
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _save(out, res, name)
    from bench.report import main as render_page

    render_page([str(out)])


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _peak(peaks: dict, dtype: str) -> float:
    """The all-thread matmul peak in `dtype`, measured once (only dtypes some path runs in: bf16 without native
    support is emulated at well under 1 GFLOP/s)."""
    if dtype not in peaks:
        peaks[dtype] = matmul_peak(DTYPES[dtype])
        log.info("matmul peak %s: %.0f GFLOP/s", dtype, peaks[dtype] / 1e9)
    return peaks[dtype]


def _choices(value: str, valid, what: str) -> list[str]:
    got = [v for v in value.split(",") if v]
    bad = [v for v in got if v not in valid]
    if bad:
        raise SystemExit(f"--{what}: {bad} not among {list(valid)}")
    return got


def _save(out: Path, res: dict, name: str) -> None:
    tmp = out / (name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=float))
    os.replace(tmp, out / name)


if __name__ == "__main__":
    main()
