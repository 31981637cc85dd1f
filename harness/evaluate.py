"""Evaluation of causal-LM tasks: per eval split, the answer-token likelihood (loss, perplexity), greedy
generations scored with the task's metrics, or multiple-choice next-token scoring (MMLU). Predictions are written
next to the record (`predictions/<split>.jsonl`) so every number can be traced to the text behind it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from harness import lm
from harness import metrics as metric_fns
from harness.config import kind_of, stop_strings

log = logging.getLogger(__name__)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rows as JSON lines, written to a temporary file and moved into place (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def score_choices(model, tokenizer, df, *, batch_size: int, max_len: int, dtype: torch.dtype) -> tuple[dict, list]:
    """Multiple choice (MMLU): the answer letter with the highest next-token logit."""
    from harness.metrics import mmlu
    from harness.tasks.causal import CHOICES

    ids = lm.choice_token_ids(tokenizer, [" " + c for c in CHOICES])
    logits = lm.choice_logits(model, tokenizer, list(df["prompt"]), ids, batch_size=batch_size,
                              max_len=max_len, dtype=dtype)
    gold = [CHOICES.index(a.strip()) for a in df["answer"]]
    subjects = list(df["subject"]) if "subject" in df.columns else ["all"] * len(df)
    res = mmlu.score(logits, gold, subjects)
    preds = [{"i": i, "subject": s, "pred": CHOICES[int(p)], "gold": CHOICES[g]}
             for i, (s, p, g) in enumerate(zip(subjects, logits.argmax(-1), gold))]
    return res, preds


def decoding(task) -> dict:
    """The task's decoding settings for lm.generate (greedy unless task.num_beams > 1)."""
    return {"num_beams": int(task.num_beams or 1), "length_penalty": float(task.length_penalty),
            "no_repeat_ngram_size": int(task.no_repeat_ngram_size or 0)}


def evaluate_split(model, tokenizer, task, df, ds, *, batch_size: int, max_len: int, dtype: torch.dtype,
                   tables: Optional[dict] = None) -> tuple[dict, list, Optional[dict]]:
    """One split -> (metrics, per-example predictions, generation stats or None)."""
    names = list(task.metrics)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if kind_of(task) == "multiple_choice":
        res, preds = score_choices(model, tokenizer, df, batch_size=batch_size, max_len=max_len, dtype=dtype)
        return res, preds, None
    out: dict = {}
    if any(n in metric_fns.LIKELIHOOD for n in names):
        nll = lm.answer_nll(model, ds, pad_id=pad, batch_size=batch_size, dtype=dtype)
        out.update({k: nll[k] for k in ("loss", "perplexity") if k in names})
        out["answer_tokens"] = nll["tokens"]
    else:
        nll = None
    gen_names = [n for n in names if n in metric_fns.GENERATION]
    preds: list = []
    stats = None
    if gen_names:
        if "group" in df.columns:  # several references per input: generate once per input, score against all
            inputs = list(df.groupby("group", sort=False))
            keys = [k for k, _ in inputs]
            prompts = [g["prompt"].iloc[0] for _, g in inputs]
            refs: list = [[a.strip() for a in g["answer"]] for _, g in inputs]
        else:
            prompts, refs, keys = list(df["prompt"]), [a.strip() for a in df["answer"]], None
        texts, stats = lm.generate(model, tokenizer, prompts, max_new_tokens=int(task.max_new_tokens),
                                   stop=stop_strings(task), batch_size=batch_size, max_prompt_len=max_len, dtype=dtype,
                                   **decoding(task))
        table_ids = list(df["table_id"]) if "table_id" in df.columns else None
        out.update(metric_fns.score_generations(gen_names, texts, refs, table_ids, tables))
        for i, (t, a) in enumerate(zip(texts, refs)):
            row = {"i": i, "pred": t, "gold": a} if keys is None else {"i": i, "group": keys[i], "pred": t, "refs": a}
            if "logical_form_accuracy" in gen_names:
                from harness.metrics.sql import logical_form_match

                row["logical_form_match"] = logical_form_match(t, a)
            preds.append(row)
        log.info("generated %d answers, %.1f new tokens/s", len(texts), stats["tokens_per_s"] or 0)
    if nll is not None:  # each answer's NLL and token count: a report bootstraps loss and perplexity over examples
        if not preds:
            preds = [{"i": i, "gold": a.strip()} for i, a in enumerate(df["answer"])]
        if "group" not in df.columns and len(preds) == len(nll["per_example"]):  # one row per example
            for row, (s, n) in zip(preds, nll["per_example"]):
                row.update({"nll": s, "tokens": n})
    return out, preds, stats


def evaluate_all(model, tokenizer, task, frames: dict, datasets: dict, *, batch_size: int, max_len: int,
                 dtype: torch.dtype, out_dir: Optional[Path] = None, tables: Optional[dict] = None,
                 tag: str = "") -> tuple[dict, dict]:
    """Every eval split -> ({split: metrics}, {split: generation stats})."""
    final, gen = {}, {}
    for split, df in frames.items():
        res, preds, stats = evaluate_split(model, tokenizer, task, df, datasets.get(split), batch_size=batch_size,
                                           max_len=max_len, dtype=dtype, tables=tables)
        final[split] = res
        if stats is not None:
            gen[split] = stats
        if out_dir is not None and preds:
            write_jsonl(Path(out_dir) / "predictions" / f"{tag}{split}.jsonl", preds)
    return final, gen
