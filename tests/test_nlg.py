"""The generation metrics (harness/metrics/nlg.py) against values computed by hand or published by the packages."""

import math

import pytest

from harness.metrics import nlg, score_generations

needs_java = pytest.mark.skipif(not nlg.java_available(), reason="the COCO caption tools need a Java runtime")


def test_bleu_reproduces_sacrebleus_published_example():
    # sacrebleu's README: BLEU = 48.53 for these three outputs against two reference streams
    refs = [["The dog bit the man.", "The dog had bit the man."],
            ["It was not unexpected.", "No one was surprised."],
            ["The man bit him first.", "The man had bitten the dog."]]
    preds = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    assert nlg.bleu(preds, refs) == pytest.approx(0.4853, abs=5e-5)
    # a variable number of references: an input with one reference scores as if the others were absent
    assert nlg.bleu(["a b c d"], [["a b c d"]]) == pytest.approx(1.0)
    assert nlg.bleu(["a b c d", "e f g h"], [["a b c d", "x"], ["e f g h"]]) == pytest.approx(1.0)
    assert nlg.bleu(["The Cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)  # no case


def test_nist_by_hand():
    # references "a b d": info(a) = info(b) = log2(3 words / 1) ; info("a b") = log2(count(a) / count(a b)) = 0
    # NIST = (info(a) + info(b)) / 3 unigrams of the output + 0 / 2 bigrams + 0 / 1 trigram, brevity 1
    assert nlg.nist(["a b c"], [["a b d"]]) == pytest.approx(2 * math.log2(3) / 3)
    assert nlg.nist(["a b"], [["a b"]]) == pytest.approx(1.0)  # orders past the output's length add nothing
    assert nlg.nist([""], [["a b"]]) == 0.0


def test_rouge_by_hand_stemmed_and_best_reference():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 tokens: P = 5/5, R = 5/6, F = 10/11
    assert nlg.rouge_l(["the cat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(10 / 11)
    # LCS = "a c" (2): P = 2/3, R = 2/4, F = 4/7; case and punctuation are ignored
    assert nlg.rouge_l(["A, b, C."], [["a c d e"]]) == pytest.approx(4 / 7)
    assert nlg.rouge_l(["x y"], [["p q"]]) == 0.0
    # the best of several references; the Porter stemmer makes "cats sitting" match "cat sits"
    assert nlg.rouge_l(["x y", "cats sitting"], [["p q", "x y"], ["cat sits"]]) == pytest.approx(1.0)
    # ROUGE-1 / ROUGE-2 of "a b c" against "a b d": unigrams 2/3, bigrams 1/2
    assert nlg.rouge_1(["a b c"], [["a b d"]]) == pytest.approx(2 / 3)
    assert nlg.rouge_2(["a b c"], [["a b d"]]) == pytest.approx(1 / 2)


def test_exact_match_any_and_bad_input():
    assert nlg.exact_match_any(["b ", "z"], [["a", "b"], ["y"]]) == pytest.approx(0.5)
    with pytest.raises(nlg.MetricError, match="2 generations but 1 reference"):
        nlg.bleu(["a", "b"], [["a"]])
    with pytest.raises(nlg.MetricError, match="input 1 has no reference"):
        nlg.rouge_l(["a", "b"], [["a"], []])


@needs_java
def test_coco_metrics_on_a_two_mr_toy_by_hand():
    # CIDEr-D with two inputs: every n-gram here occurs in one input's references, so each weighs log(2) - log(1);
    # input 2 matches exactly (10); input 1 "the cat sat up" vs "the cat sat down": cosines 3/4, 2/3, 1/2, 0
    # over 1- to 4-grams, equal lengths -> 10 * mean = 4.7917; corpus CIDEr = (4.7917 + 10) / 2
    preds = ["the cat sat up", "green eggs and ham"]
    got = score_generations(["cider", "rouge_l_coco", "meteor", "bleu"], preds,
                            [["the cat sat down"], ["green eggs and ham"]])
    assert got["cider"] == pytest.approx((10 * (3 / 4 + 2 / 3 + 1 / 2 + 0) / 4 + 10) / 2)
    # COCO ROUGE-L: F with beta 1.2 = (1 + b^2) P R / (R + b^2 P); input 1 P = R = 3/4, input 2 exact
    assert got["rouge_l_coco"] == pytest.approx((0.75 + 1.0) / 2)
    assert 0.3 < got["meteor"] < 1.0
    # several references: max precision (3/4 from ref 1) and max recall (2/2 from "the up") combine;
    # an empty generation scores 0
    b2 = 1.2 ** 2
    two = nlg.score(["rouge_l_coco"], ["the cat sat up", ""], [["the cat sat down", "the up"], ["green eggs and ham"]])
    assert two["rouge_l_coco"] == pytest.approx(((1 + b2) * 0.75 * 1.0 / (1.0 + b2 * 0.75) + 0) / 2)
