"""Simulated 4-bit types (harness/fakequant.py): NF4 and FP4 reproduce bitsandbytes exactly; Int4 and FP4 E3M0
by hand; a model's linear layers are replaced, its head is not; bad settings are refused."""

import pytest
import torch

from harness import fakequant as fq


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_nf4_and_fp4_match_bitsandbytes_codes_and_round_trip(kind):
    import bitsandbytes.functional as F

    bnb_codes = sorted(set(F.get_4bit_type(kind, device="cpu").tolist()))
    assert fq.codes(kind).tolist() == pytest.approx(bnb_codes, abs=1e-7)
    torch.manual_seed(0)
    w = torch.randn(96, 130) * 0.05  # 12,480 weights: the last block of 64 is partial
    q, state = F.quantize_4bit(w, blocksize=64, quant_type=kind)
    assert torch.equal(fq.quantize_dequantize(w, kind), F.dequantize_4bit(q, state))


def test_int4_and_fp4_e3m0_by_hand():
    assert fq.codes("int4").tolist() == pytest.approx([k / 7 for k in range(-7, 8)])
    assert sorted(set(abs(c) for c in fq.codes("fp4_e3m0").tolist())) == [0.0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4,
                                                                           1 / 2, 1.0]
    # one block of 4, absmax 1.4, normalized [1, -0.5, 0.2, 0]. Int4: -0.5 = -3.5/7 lies on the midpoint of -4/7
    # and -3/7 (a value on a midpoint goes to the lower code); 0.2 = 1.4/7 -> 1/7
    w = torch.tensor([1.4, -0.7, 0.28, 0.0])
    got = fq.quantize_dequantize(w, "int4", blocksize=4)
    assert got.tolist() == pytest.approx([1.4, -4 / 7 * 1.4, 1 / 7 * 1.4, 0.0])
    # e3m0: 0.2 -> nearest of 1/4 and 1/8 is 1/4 (0.05 vs 0.075); -0.5 -> -1/2 exactly
    got = fq.quantize_dequantize(w, "fp4_e3m0", blocksize=4)
    assert got.tolist() == pytest.approx([1.4, -0.7, 0.25 * 1.4, 0.0])
    assert torch.equal(fq.quantize_dequantize(torch.zeros(5), "nf4"), torch.zeros(5))  # an all-zero block stays 0


def test_apply_replaces_linear_weights_not_the_head_and_reports_the_error(tiny_bert):
    from harness import methods, models
    from tests.conftest import compose, tiny_overrides

    cfg = compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=stsb", "task.pair_encoding=bi"])
    model = models.load_classifier(tiny_bert, cfg.model, 1, bi_encoder=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = fq.apply(model, "int4", skip=methods.EXCLUDE_FROM_ALL_LINEAR)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.endswith(".weight") for n in changed)
    assert not any(s in n for n in changed for s in methods.EXCLUDE_FROM_ALL_LINEAR)
    assert info["layers"] == len(changed) and 0 < info["rel_error_mean"] <= info["rel_error_max"] < 0.5
    for n in changed:  # each weight now holds at most 15 distinct values per block of 64
        w = after[n].detach().reshape(-1)[:64]
        assert len(set(w.tolist())) <= 15


def test_bad_fake_quant_settings_are_refused():
    from harness.config import ConfigError, validate
    from tests.conftest import compose

    validate(compose(["method=fake_int4"]))
    with pytest.raises(ConfigError, match="fake_quant='int5' is not valid; valid: none, fp4, fp4_e3m0, int4, nf4"):
        validate(compose(["method=fake_int4", "method.fake_quant=int5"]))
    with pytest.raises(ConfigError, match="cannot be combined with quant='nf4'"):
        validate(compose(["method=qlora_nf4", "method.fake_quant=int4"]))
