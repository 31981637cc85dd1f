"""train.fast_dropout: the mask's distribution, scaling, seeding and gradient; which modules a run swaps."""

import math

import pytest
import torch
from torch import nn

from harness.dropout import FastDropout, keep_mask, use_fast_dropout
from tests.conftest import compose, tiny_overrides


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_each_element_is_kept_with_probability_one_minus_p_and_scaled(p):
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of 4: the last 64-bit draw is cut
    m = keep_mask(torch.Size([n]), p, torch.float32)
    assert m.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    kept = (m > 0).double()
    q = 1 - round(p * 65536) / 65536
    sd = math.sqrt(q * (1 - q) / n)
    assert abs(kept.mean().item() - q) < 5 * sd
    # each of the four 16-bit slices of a draw, and neighbouring elements, are as independent as the bits allow
    slots = kept[: n - n % 4].view(-1, 4)
    for k in range(4):
        assert abs(slots[:, k].mean().item() - q) < 5 * 2 * sd
    both = (kept[:-1] * kept[1:]).mean().item()
    assert abs(both - q * q) < 5 * 2 * sd
    # E[mask] = 1: dropout leaves the expected activation unchanged
    assert abs(m.double().mean().item() - 1) < 5 * sd / (1 - p)


def test_the_mask_follows_torchs_seed_and_the_gradient_is_the_mask():
    x = torch.randn(7, 33, requires_grad=True)
    drop = FastDropout(0.1)
    torch.manual_seed(3)
    y1 = drop(x)
    torch.manual_seed(3)
    y2 = drop(x)
    torch.manual_seed(4)
    y3 = drop(x)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    mask = torch.where(y1 != 0, 1 / 0.9, 0.0)
    assert torch.allclose(y1, x * mask)
    y1.sum().backward()
    assert torch.allclose(x.grad, mask)
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(FastDropout(0.0)(x), x)


def test_a_run_swaps_every_dropout_module_unless_told_not_to(tiny_bert):
    from harness.runner import build_model

    def dropouts(model):
        return [type(m) for m in model.modules() if isinstance(m, nn.Dropout)]

    ov = tiny_overrides(tiny_bert, "bert", "cls") + ["method=lora", "lora.targets=qv", "lora.dropout=0.1"]
    model, *_ = build_model(compose(ov), tiny_bert, 2)
    kinds = dropouts(model)
    # the BERT's own dropouts and peft's lora_dropout (one per adapted layer: 2 layers x q, v)
    assert kinds and set(kinds) == {FastDropout}
    assert sum(1 for n, m in model.named_modules() if "lora_dropout" in n and isinstance(m, FastDropout)) == 4
    model, *_ = build_model(compose(ov + ["train.fast_dropout=false"]), tiny_bert, 2)
    assert set(dropouts(model)) == {nn.Dropout}
    assert use_fast_dropout(model) == len(dropouts(model))


def test_fast_dropout_off_hashes_as_a_config_from_before_the_key():
    from harness.config import resolved
    from harness.records import config_hash

    on = resolved(compose(["method=lora"]))
    off = resolved(compose(["method=lora", "train.fast_dropout=false"]))
    before = {**off, "train": {k: v for k, v in off["train"].items() if k != "fast_dropout"}}
    assert config_hash(off) == config_hash(before) != config_hash(on)
