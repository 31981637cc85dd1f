"""Generation metrics against one or more references per input: the E2E NLG challenge's set (BLEU, NIST, METEOR,
ROUGE-L, CIDEr; LoRA paper Table 3), ROUGE-1/2/L as the summarization and instruction papers compute them, and
exact match.

Every metric takes `preds` (one generated text per input) and `refs` (a list of reference texts per input) and
returns one corpus-level float. Implementations are maintained packages, configured as the E2E challenge's script
(tuetschek/e2e-metrics, which the LoRA repository runs) configures its own:

- `bleu`: corpus BLEU-4 from sacrebleu with mteval-v13a tokenization, case-insensitive (mteval-v13a's default, as
  the E2E script calls it), on a 0-1 scale; a variable number of references per input is allowed.
- `nist`: corpus NIST-5 from nltk on the same lower-cased 13a tokens (nltk's NIST follows mteval's formula; the
  E2E script's Perl mteval pads missing references, so values can differ in the second decimal).
- `meteor`, `rouge_l_coco`, `cider`: the COCO caption evaluation code (pycocoevalcap) on text tokenized by its
  PTB tokenizer, exactly as the E2E script runs them: METEOR 1.5, ROUGE-L with beta 1.2 (max precision and max
  recall over the references), CIDEr (CIDEr-D: idf over this evaluation set's references, clipping, length
  penalty). METEOR and the PTB tokenizer are Java programs: they need a Java runtime (`java` on PATH).
- `rouge_1`, `rouge_2`, `rouge_l`: Google's rouge-score with its Porter stemmer, F1, the best reference per input.
- `exact_match_any`: the stripped generation equals one of the references.
"""

from __future__ import annotations

import shutil
from functools import partial
from typing import Callable

Refs = list[list[str]]

JAVA_METRICS = ("meteor", "rouge_l_coco", "cider")  # PTB tokenizer / METEOR are Java programs
JAVA_HINT = ("install a Java runtime (Debian: apt-get install default-jre-headless) or drop them from task.metrics")


class MetricError(ValueError):
    pass


def java_available() -> bool:
    return shutil.which("java") is not None


def _check(preds: list[str], refs: Refs) -> None:
    if len(preds) != len(refs):
        raise MetricError(f"{len(preds)} generations but {len(refs)} reference lists")
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise MetricError(f"input {empty[0]} has no reference ({len(empty)} such inputs)")


def _tok13a(s: str) -> list[str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(s.strip().lower()).split()


def bleu(preds: list[str], refs: Refs) -> float:
    """Corpus BLEU-4 (0-1), mteval-v13a tokens, case-insensitive, any number of references per input."""
    import sacrebleu

    _check(preds, refs)
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]  # None: no k-th reference
    return sacrebleu.corpus_bleu([p.strip() for p in preds], streams, lowercase=True, tokenize="13a").score / 100


def nist(preds: list[str], refs: Refs, n: int = 5) -> float:
    """Corpus NIST-n (nltk) over lower-cased 13a tokens."""
    from nltk.translate.nist_score import corpus_nist

    _check(preds, refs)
    hyps = [_tok13a(p) for p in preds]
    longest = max((len(h) for h in hyps), default=0)
    if not longest:
        return 0.0
    # an order no generation reaches adds nothing (mteval skips it; nltk would divide by zero)
    return float(corpus_nist([[_tok13a(r) for r in rs] for rs in refs], hyps, n=min(n, longest)))


def _coco_inputs(preds: list[str], refs: Refs) -> tuple[dict, dict]:
    """PTB-tokenized {id: [refs]}, {id: [pred]} as pycocoevalcap's scorers take them (lower case, punctuation
    dropped)."""
    if not java_available():
        raise MetricError(f"METEOR, ROUGE-L (COCO) and CIDEr run the COCO caption tools, which need Java: {JAVA_HINT}")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _check(preds, refs)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": p if p.strip() else "."}] for i, p in enumerate(preds)})
    return gts, res


def _coco(scorer_name: str, preds: list[str], refs: Refs, tokenized=None) -> float:
    gts, res = tokenized or _coco_inputs(preds, refs)
    res = {i: [h[0] if h and h[0] else ""] for i, h in res.items()}
    if scorer_name == "meteor":  # a METEOR 1.5 Java process, ended when the scorer is collected
        from pycocoevalcap.meteor.meteor import Meteor

        return float(Meteor().compute_score(gts, res)[0])
    if scorer_name == "cider":
        from pycocoevalcap.cider.cider import Cider

        return float(Cider().compute_score(gts, res)[0])
    from pycocoevalcap.rouge.rouge import Rouge

    return float(Rouge().compute_score(gts, res)[0])


def _rouge(kind: str, preds: list[str], refs: Refs) -> float:
    from rouge_score import rouge_scorer

    _check(preds, refs)
    if not preds:
        return float("nan")
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    return sum(max(scorer.score(r, p)[kind].fmeasure for r in rs) for p, rs in zip(preds, refs)) / len(preds)


meteor = partial(_coco, "meteor")
cider = partial(_coco, "cider")
rouge_l_coco = partial(_coco, "rouge_l_coco")
rouge_1 = partial(_rouge, "rouge1")
rouge_2 = partial(_rouge, "rouge2")
rouge_l = partial(_rouge, "rougeL")


def exact_match_any(preds: list[str], refs: Refs) -> float:
    _check(preds, refs)
    if not preds:
        return float("nan")
    return sum(p.strip() in {r.strip() for r in rs} for p, rs in zip(preds, refs)) / len(preds)


METRICS: dict[str, Callable[[list[str], Refs], float]] = {
    "bleu": bleu,
    "nist": nist,
    "meteor": meteor,
    "rouge_l_coco": rouge_l_coco,
    "cider": cider,
    "rouge_1": rouge_1,
    "rouge_2": rouge_2,
    "rouge_l": rouge_l,
    "exact_match_any": exact_match_any,
}


def score(names: list[str], preds: list[str], refs: Refs) -> dict[str, float]:
    """The named metrics; the COCO ones share one PTB tokenization (one Java start)."""
    out: dict[str, float] = {}
    coco = [n for n in names if n in JAVA_METRICS]
    tokenized = _coco_inputs(preds, refs) if coco else None
    for name in names:
        if name in JAVA_METRICS:
            out[name] = _coco(name, preds, refs, tokenized)
        else:
            out[name] = METRICS[name](preds, refs)
    return out
