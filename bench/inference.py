"""`make bench-inference` (part of `make bench`): does a LoRA adapter add inference latency? (LoRA Table 1's
question; the paper's answer: unmerged adapters add latency, merged ones none.)

For each shipped model, five variants built from the same weights (harness.runner.build_model, the same seed):
  base             the model with no adapter (method=full, in eval mode)
  lora             LoRA (Wq,Wv, r=8) unmerged: peft's layers compute W x + s B A x
  lora_merged      the same adapter folded into W (peft's merge_and_unload): a plain model again
  qlora            a 4-bit NF4 base (bitsandbytes) with the adapter unmerged, as QLoRA serves
  qlora_merged     that adapter merged into a dequantized copy of the 4-bit base, in the compute dtype
The adapters' B matrices are set to small random values (B = 0 at initialisation would make every adapter a no-op
in the outputs, though not in the time), so merged and unmerged outputs can be compared: the largest difference is
reported beside the timings.

Measured (torch.inference_mode, all cores): forward latency at batch 1 and batch 8 (real texts of the task padded
to the batch's longest, at most MAX_LEN tokens; MiniLM-L6: the sentence encoder's pooled embedding, SmolLM2: the
logits) and greedy generation tokens/s at batch 1 and 8 (SmolLM2: exactly GEN_TOKENS new tokens). The variants are
timed round-robin, one call each per round, so drift on a shared machine hits all of them alike; each number is
the median over the rounds with its interquartile range. "merged = base within noise": the median over rounds of
the per-round ratio merged / base, with a bootstrap 90% interval over rounds, inside 1 +- TOLERANCE.

Writes reports/bench/inference.json; bench/report.py renders it as the README's inference section.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from harness.cli import key_value_args

log = logging.getLogger("bench.inference")
ROOT = Path(__file__).resolve().parent.parent
MAX_LEN = 64
GEN_TOKENS = 32
TOLERANCE = 0.05  # "within noise": the merged / base latency ratio's 90% interval inside [0.95, 1.05]
VARIANTS = ("base", "lora", "lora_merged", "qlora", "qlora_merged")
MODELS = {"minilm": ("minilm_l6", "mrpc"), "smollm2": ("smollm2_135m", "wikisql")}


def _build(model: str, task: str, method: str):
    from harness import models
    from harness.config import compose
    from harness.runner import build_model, num_labels

    cfg = compose([f"model={model}", f"task={task}", f"method={method}", "lora.targets=qv", "lora.r=8",
                   "lora.dropout=0.0", "train.seed=0"])
    path = models.resolve(cfg.model.source, cfg.paths.cache_dir, cfg.model.name)
    m, dtype, _, _ = build_model(cfg, path, num_labels(cfg.task))
    return cfg, m.eval(), models.load_tokenizer(path, cfg.model), dtype


def _randomize_b(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def variants(model: str, task: str) -> tuple[dict, dict]:
    """{variant: model} and what each is, built from the same weights and the same adapter values."""
    from harness.merge import _dequantize, _forget_quantization

    cfg, base, tok, dtype = _build(model, task, "full")
    _, lora, _, _ = _build(model, task, "lora")
    _randomize_b(lora)
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    _, qlora, _, qdtype = _build(model, task, "qlora_nf4")
    _randomize_b(qlora)  # the same seed: the same B values as the fp32 adapter
    _, qmerged, _, _ = _build(model, task, "qlora_nf4")  # a second copy (a deep copy loses bitsandbytes' state)
    _randomize_b(qmerged)
    n = _dequantize(qmerged)
    qmerged = qmerged.merge_and_unload()
    _forget_quantization(qmerged)
    qmerged = qmerged.to(qdtype).eval()
    info = {"compute_dtype": str(dtype).replace("torch.", ""), "qlora_compute_dtype": str(qdtype).replace("torch.", ""),
            "qlora_dequantized_layers": n}
    return {"base": base, "lora": lora, "lora_merged": merged, "qlora": qlora, "qlora_merged": qmerged}, \
        {"cfg": cfg, "tok": tok, "info": info}


def _inputs(cfg, tok, batch: int) -> dict:
    from harness.config import is_causal
    from harness.tasks import find_data_dir, load_task

    data = load_task(cfg.task, find_data_dir(cfg.paths.data_dir), seed=0, need_train=False)
    df = next(iter(data.evals.values())).iloc[:batch]
    texts = list(df["prompt"]) if is_causal(cfg.task) else list(df[cfg.task.text_fields[0]])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left" if is_causal(cfg.task) else "right"
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _forward_fn(model, causal: bool, x: dict):
    if causal:
        return lambda: model(**x).logits
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lambda: inner.encode(x["input_ids"], x["attention_mask"])


def _generate_fn(model, x: dict, tok):
    return lambda: model.generate(**x, max_new_tokens=GEN_TOKENS, min_new_tokens=GEN_TOKENS, do_sample=False,
                                  pad_token_id=tok.pad_token_id)


def round_robin(fns: dict, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    with torch.inference_mode():
        for f in fns.values():
            for _ in range(warmup):
                f()
        times = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    return times


def ratio(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """Median over rounds of a_i / b_i with a bootstrap 90% interval over rounds."""
    r = np.asarray(a) / np.asarray(b)
    g = np.random.default_rng(seed)
    draws = [float(np.median(r[g.integers(0, len(r), len(r))])) for _ in range(n_boot)]
    lo, hi = np.quantile(draws, [0.05, 0.95])
    return {"median": float(np.median(r)), "lo90": float(lo), "hi90": float(hi),
            "within_tolerance": bool(1 - TOLERANCE <= lo and hi <= 1 + TOLERANCE)}


def _stats(t: list[float]) -> dict:
    q1, q3 = np.quantile(t, [0.25, 0.75])
    return {"median_s": statistics.median(t), "q1_s": float(q1), "q3_s": float(q3), "n": len(t)}


def bench_model(key: str, rounds: int, gen_rounds: int) -> dict:
    from harness.config import is_causal

    model, task = MODELS[key]
    ms, meta = variants(model, task)
    cfg, tok = meta["cfg"], meta["tok"]
    causal = is_causal(cfg.task)
    out = {"model": model, "task": task, **meta["info"], "forward": {}, "generate": {}, "max_abs_diff": {}}
    for batch in (1, 8):
        x = _inputs(cfg, tok, batch)
        fns = {k: _forward_fn(m, causal, x) for k, m in ms.items()}
        with torch.inference_mode():  # merged vs unmerged outputs: the same maths?
            ref = {k: f().float() for k, f in fns.items()}
        out["max_abs_diff"][f"b{batch}"] = {
            "lora_merged_vs_lora": float((ref["lora_merged"] - ref["lora"]).abs().max()),
            "qlora_merged_vs_qlora": float((ref["qlora_merged"] - ref["qlora"]).abs().max()),
            "lora_vs_base": float((ref["lora"] - ref["base"]).abs().max())}
        times = round_robin(fns, rounds)
        tokens = int(x["attention_mask"].sum())
        out["forward"][f"b{batch}"] = {
            "tokens": tokens, "seq_len": int(x["input_ids"].shape[1]),
            "variants": {k: _stats(t) for k, t in times.items()},
            "lora_merged_over_base": ratio(times["lora_merged"], times["base"]),
            "lora_over_base": ratio(times["lora"], times["base"]),
            "qlora_over_base": ratio(times["qlora"], times["base"]),
            "qlora_merged_over_base": ratio(times["qlora_merged"], times["base"])}
        log.info("%s forward b%d: %s", model, batch,
                 ", ".join(f"{k} {1e3 * statistics.median(t):.1f} ms" for k, t in times.items()))
        if causal:
            gens = {k: _generate_fn(m, x, tok) for k, m in ms.items()}
            gtimes = round_robin(gens, gen_rounds, warmup=1)
            out["generate"][f"b{batch}"] = {
                "new_tokens": GEN_TOKENS * batch,
                "variants": {k: _stats(t) | {"tokens_per_s": GEN_TOKENS * batch / statistics.median(t)}
                             for k, t in gtimes.items()},
                "lora_merged_over_base": ratio(gtimes["lora_merged"], gtimes["base"]),
                "lora_over_base": ratio(gtimes["lora"], gtimes["base"])}
            log.info("%s generate b%d: %s", model, batch,
                     ", ".join(f"{k} {GEN_TOKENS * batch / statistics.median(t):.1f} tok/s" for k, t in gtimes.items()))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
    ap.add_argument("--rounds", type=int, default=30, help="timed forward calls per variant (round-robin)")
    ap.add_argument("--gen-rounds", type=int, default=5, help="timed generations per variant")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench"))
    a = ap.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), ap))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][bench] %(message)s")
    import transformers

    from bench.throughput import _choices, machine

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(os.cpu_count() or 1)
    chosen = _choices(a.models, MODELS, "models")
    res = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds": a.rounds,
           "gen_rounds": a.gen_rounds, "max_len": MAX_LEN, "gen_tokens": GEN_TOKENS, "tolerance": TOLERANCE,
           "env": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_WAIT_POLICY")},
           "models": {}}
    for k in chosen:
        res["models"][k] = bench_model(k, a.rounds, a.gen_rounds)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(json.dumps(res, indent=1) + "\n")
    from bench.report import main as render

    render([str(out)])


if __name__ == "__main__":
    main()
