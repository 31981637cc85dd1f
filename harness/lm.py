"""Causal language models: supervised fine-tuning data (loss on answer tokens only) and evaluation
(batched greedy generation with stop strings, answer-token perplexity, multiple-choice next-token scoring).

Evaluation runs on whatever model it is given (base, LoRA, QLoRA) and never computes full-vocabulary logits for
positions it does not score: the decoder's hidden states are gathered at the scored positions first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

IGNORE = -100  # label value the loss skips (prompt and padding tokens)


def scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a causal LM's loss reads its logits: position t predicts token t+1, so t is scored where label t+1 is
    not IGNORE (the answer's tokens; the prompt's and padding's are not; the last position never is). Returns the
    boolean [batch, seq] mask and the targets of the kept positions, row-major as a boolean index takes them: the one
    place the shift is written, for training (`train.scored_only`) and evaluation (`answer_nll`) alike."""
    nxt = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    keep = nxt != IGNORE
    return keep, nxt[keep]


# ------------------------------------------------------------------------------------------ training data
def encode_example(tokenizer, prompt: str, answer: str, max_len: int, add_eos: bool = True) -> dict:
    """prompt + answer (+ EOS) -> input_ids and labels, labels = IGNORE on the prompt.

    Prompt and answer are tokenized apart and concatenated, so the boundary is exact. Too long: the answer keeps
    at least half the budget and the prompt loses tokens from its start (its end, next to the answer, stays).
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        p = [tokenizer.bos_token_id] + p
    if add_eos and tokenizer.eos_token_id is not None:
        a = a + [tokenizer.eos_token_id]
    truncated = len(p) + len(a) > max_len
    if truncated:
        a = a[: max(max_len - len(p), max_len // 2)]
        p = p[len(p) - (max_len - len(a)):] if max_len - len(a) > 0 else []
    return {"input_ids": p + a, "attention_mask": [1] * (len(p) + len(a)), "labels": [IGNORE] * len(p) + a,
            "length": len(p) + len(a), "truncated": truncated}


def tokenize_sft(df: pd.DataFrame, tokenizer, max_len: int):
    """DataFrame with prompt/answer -> datasets.Dataset with input_ids, attention_mask, labels, length."""
    import datasets

    rows = [encode_example(tokenizer, p, a, max_len) for p, a in zip(df["prompt"], df["answer"])]
    n_trunc = sum(r.pop("truncated") for r in rows)
    if n_trunc:
        log.info("%d of %d examples truncated to %d tokens", n_trunc, len(rows), max_len)
    return datasets.Dataset.from_list(rows)


def padded_length(n: int, multiple: int) -> int:
    """A batch's length: its longest sequence `n` rounded up to a multiple of `multiple` (every collator pads so)."""
    return -(-n // multiple) * multiple


@dataclass
class SFTCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (IGNORE) to the longest in the batch,
    rounded up to a multiple of `pad_to_multiple_of`."""

    pad_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, features: list[dict]) -> dict:
        n = padded_length(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE, dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"])
            mask[i, :k] = 1
            labels[i, :k] = torch.as_tensor(f["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ------------------------------------------------------------------------------------------ model pieces
def _parts(model):
    """(decoder returning hidden states, output projection) of a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _autocast(dtype: torch.dtype, device: str):
    if dtype == torch.bfloat16:
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _device(model) -> str:
    return next(model.parameters()).device.type


@contextlib.contextmanager
def frozen_weights_in(model, dtype: torch.dtype):
    """While decoding under autocast to `dtype` (bf16): every frozen fp32 nn.Linear weight held as a `dtype` copy.
    Autocast caches its casts of trainable weights for the whole context, but casts a frozen weight again at every
    call, so each decoding step of a LoRA/QLoRA-on-fp32-base model re-cast the whole base (SmolLM2: 135M values a
    token). The copy is the same cast done once: the matmuls see the same bf16 values, so the outputs are
    bitwise the same (tested). A weight tied to an input embedding (the LM head) gets its own copy for the output
    layer only (the embedding lookup keeps fp32); the originals and the tie are put back on exit. Nothing is done
    for other dtypes, or when an adapter uses DoRA (it reads the base weight outside the matmul)."""
    if dtype != torch.bfloat16 or any(any(getattr(m, "use_dora", {}).values()) for m in model.modules()):
        yield 0
        return
    embedded = {p.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    swapped = []  # (module, its original weight Parameter, that Parameter's fp32 data; None: a separate copy)
    try:
        for m in model.modules():
            w = getattr(m, "weight", None)
            if (isinstance(m, torch.nn.Linear) and isinstance(w, torch.nn.Parameter) and w.dtype == torch.float32
                    and not w.requires_grad):
                if w.data_ptr() in embedded:  # tied to the input embedding: a copy for this layer alone
                    m.weight = torch.nn.Parameter(w.detach().to(dtype), requires_grad=False)
                    swapped.append((m, w, None))
                else:
                    swapped.append((m, w, w.data))
                    w.data = w.data.to(dtype)
        yield len(swapped)
    finally:
        for m, w, data in reversed(swapped):
            if data is None:
                m.weight = w
            else:
                w.data = data


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.as_tensor(s)
        mask[i, n - len(s):] = 1
    return ids, mask


def _batches_by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# ------------------------------------------------------------------------------------------ likelihood
@torch.no_grad()
def answer_nll(model, dataset, *, pad_id: int, batch_size: int, dtype: torch.dtype) -> dict:
    """Sum of negative log-likelihoods over the answer tokens (labels != IGNORE) and their count;
    loss = mean NLL per answer token, perplexity = exp(loss). `per_example`: each example's (NLL sum, answer tokens)
    in the dataset's order, so a report can bootstrap the perplexity over examples."""
    decoder, head = _parts(model)
    was_training = model.training
    model.eval()
    device = _device(model)
    collate = SFTCollator(pad_id)
    nll = [0.0] * len(dataset)
    tokens = [0] * len(dataset)
    lengths = list(dataset["length"])
    for idx in _batches_by_length(lengths, batch_size):
        b = collate([dataset[i] for i in idx])
        ids, mask, labels = (b[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        with _autocast(dtype, device):
            h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        keep, target = scored_positions(labels)
        logits = head(h[keep].to(head.weight.dtype if head.weight.is_floating_point() else h.dtype)).float()
        per_token = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        rows = keep.nonzero()[:, 0]  # the batch row of each kept token (row-major, as the boolean index took them)
        per_row = torch.zeros(len(idx), dtype=per_token.dtype, device=per_token.device).index_add_(0, rows, per_token)
        for j, i in enumerate(idx):
            nll[i], tokens[i] = float(per_row[j]), int(keep[j].sum())
    model.train(was_training)
    total, count = float(sum(nll)), int(sum(tokens))
    loss = total / max(count, 1)
    return {"nll_sum": total, "tokens": count, "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "per_example": list(zip(nll, tokens))}


# ------------------------------------------------------------------------------------------ multiple choice
def choice_token_ids(tokenizer, choices: list[str]) -> list[int]:
    """The token each answer starts with (" A", " B", ...: the prompt ends with "Answer:")."""
    ids = []
    for c in choices:
        toks = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"choice {c!r} tokenizes to nothing")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"choices {choices} share a first token ({ids}); next-token scoring cannot tell them apart")
    return ids


@torch.no_grad()
def choice_logits(model, tokenizer, prompts: list[str], choice_ids: list[int], *, batch_size: int,
                  max_len: int, dtype: torch.dtype) -> np.ndarray:
    """[n prompts, n choices] next-token logits of each choice's token after each prompt."""
    decoder, head = _parts(model)
    was_training = model.training
    model.eval()
    device = _device(model)
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"][-max_len:] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = np.zeros((len(prompts), len(choice_ids)), dtype=np.float32)
    cid = torch.as_tensor(choice_ids)
    for idx in _batches_by_length([len(e) for e in enc], batch_size):
        ids, mask = _left_pad([enc[i] for i in idx], pad)
        with _autocast(dtype, device):
            h = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state[:, -1]
        logits = head(h.to(head.weight.dtype) if head.weight.is_floating_point() else h).float()
        out[idx] = logits[:, cid.to(logits.device)].cpu().numpy()
    model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------ generation
def _opening(text: str, stop: list[str]) -> int:
    """Where the answer starts: after the leading stop strings and whitespace (a model that opens with the stop, a
    newline, has not answered yet: that newline is not an empty answer)."""
    i = 0
    while i < len(text):
        s = next((s for s in stop if s and text.startswith(s, i)), None)
        if s is None and not text[i].isspace():
            break
        i += len(s) if s else 1
    return i


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The answer in a generation: from its opening (`_opening`) to the first stop string after it."""
    text = text[_opening(text, stop):]
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i >= 0:
                cut = min(cut, i)
    return text[:cut]


def _stop_strings_supported(tokenizer, stops: list[str]) -> bool:
    """Whether transformers can stop on these strings with this tokenizer (it maps them onto vocabulary pieces; a
    WordPiece vocabulary has no newline). When it cannot, generation runs to EOS or max_new_tokens and the answer
    is cut at the stop afterwards: the same text, more decoding steps."""
    from transformers import StopStringCriteria

    try:
        StopStringCriteria(tokenizer=tokenizer, stop_strings=stops)
    except ValueError:
        return False
    return True


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, stop: list[str], batch_size: int,
             max_prompt_len: int, dtype: torch.dtype, num_beams: int = 1, length_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0) -> tuple[list[str], dict]:
    """Greedy decoding (beam search with num_beams > 1, length_penalty and no_repeat_ngram_size as transformers
    defines them) in length-sorted batches (left padding, KV cache). Each row stops at EOS or at a stop string
    (transformers' stop_strings: checked on the newest tokens, not by decoding everything at every step); the text
    is the answer `cut_at_stop` finds. A row that stopped before answering (only whitespace and stop strings so
    far: a newline first) goes on from there, its earlier tokens appended to its prompt, within max_new_tokens in
    all: greedy decoding continues as if it had not stopped. Returns the generations (in prompt order) and timing
    statistics."""
    was_training = model.training
    model.eval()
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"][-max_prompt_len:] for p in prompts]
    stops = [x for x in stop if x]
    use_stops = bool(stops) and _stop_strings_supported(tokenizer, stops)
    texts: list[Optional[str]] = [None] * len(prompts)
    done: list[list[int]] = [[] for _ in prompts]  # tokens generated so far per row (more than one pass: a restart)
    new_tokens = 0  # generated tokens up to each row's stop (what a user waits for)
    steps = 0
    restarts = 0
    pending = list(range(len(prompts)))
    t0 = time.perf_counter()
    with frozen_weights_in(model, dtype):
        while pending:
            again = []
            lengths = [len(enc[i]) + len(done[i]) for i in pending]
            for idx in _batches_by_length(lengths, batch_size):
                rows = [pending[k] for k in idx]
                ids, mask = _left_pad([enc[i] + done[i] for i in rows], pad)
                budget = max_new_tokens - min(len(done[i]) for i in rows)
                with _autocast(dtype, device):
                    out = model.generate(
                        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=budget,
                        do_sample=False, num_beams=num_beams, pad_token_id=pad, eos_token_id=eos,
                        **({"length_penalty": length_penalty, "early_stopping": True} if num_beams > 1 else {}),
                        **({"no_repeat_ngram_size": no_repeat_ngram_size} if no_repeat_ngram_size else {}),
                        stop_strings=stops if use_stops else None, tokenizer=tokenizer if use_stops else None,
                    )
                steps += out.shape[1] - ids.shape[1]
                for j, i in enumerate(rows):
                    new = out[j, ids.shape[1]:].tolist()
                    ended = eos is not None and eos in new
                    if ended:
                        new = new[: new.index(eos)]
                    new = (done[i] + new)[:max_new_tokens]
                    text = tokenizer.decode(new, skip_special_tokens=True)
                    if (use_stops and not ended and len(new) < max_new_tokens
                            and not cut_at_stop(text, stops).strip()):
                        done[i] = new  # stopped at a stop string before any answer: go on from there
                        again.append(i)
                        continue
                    texts[i] = cut_at_stop(text, stops)
                    new_tokens += len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]) if texts[i] else 0
            restarts += len(again)
            pending = again
    wall = time.perf_counter() - t0
    model.train(was_training)
    stats = {"examples": len(prompts), "new_tokens": new_tokens, "seconds": wall,
             "tokens_per_s": new_tokens / wall if wall > 0 else None, "batch_size": batch_size,
             "max_new_tokens": max_new_tokens, "decode_steps": steps, "num_beams": num_beams,
             "length_penalty": length_penalty, "no_repeat_ngram_size": no_repeat_ngram_size,
             "restarts": restarts,  # rows that opened with a stop string and went on past it
             "stopped_on_strings": use_stops}  # false: the tokenizer cannot (cut after decoding instead)
    return [t or "" for t in texts], stats
