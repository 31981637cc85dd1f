"""model.attn_implementation=sdpa_cpu (harness/attention.py): fp32 attention on the CPU, explicit attention dropout
with harness.dropout's masks, transformers' sdpa elsewhere; checked against references written out here."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from harness import attention
from harness.attention import sdpa_cpu
from tests.conftest import compose, tiny_overrides


def _qkv(dtype, b=2, heads=4, kv_heads=2, q=9, k=9, d=16, grad=False):
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(b, h, n, d, generator=g).to(dtype) for h, n in ((heads, q), (kv_heads, k), (kv_heads, k))]
    return [x.requires_grad_(grad) for x in t]


def _reference(q, k, v, mask=None, keep=None, p=0.0, causal=False):
    """Attention in float64, written out: softmax(q k^T / sqrt(d) + mask) (x keep / (1 - p)) v, as [b, q, h, d]."""
    rep = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = q @ k.transpose(2, 3) / q.shape[-1] ** 0.5
    if causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool).tril()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    pr = s.softmax(-1)
    if keep is not None:
        pr = pr * keep / (1 - p)
    return (pr @ v).transpose(1, 2)


MODULE = SimpleNamespace(num_key_value_groups=2, is_causal=True)


def test_without_dropout_it_is_sdpa_in_fp32_under_bf16_autocast():
    q, k, v = _qkv(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = sdpa_cpu(MODULE, q, k, v, None)
    assert weights is None and out.dtype == torch.bfloat16 and out.shape == (2, 9, 4, 16)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    assert torch.equal(out, exact.transpose(1, 2).to(torch.bfloat16))
    # closer to the float64 truth than bf16 sdpa's own kernel
    ref = _reference(q, k, v, causal=True)
    bf16 = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    assert (out.double() - ref).abs().max() <= (bf16.double() - ref).abs().max()
    # fp32 without autocast: transformers' sdpa itself
    q, k, v = _qkv(torch.float32)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    assert torch.equal(sdpa_cpu(MODULE, q, k, v, None)[0], sdpa_attention_forward(MODULE, q, k, v, None)[0])


@pytest.mark.parametrize("masked", ["causal", "padding", "none"])
def test_dropout_is_written_out_with_our_masks_and_gradients_match(monkeypatch, masked):
    """The explicit path (dropout > 0) against float64 written out with the same keep mask: outputs and the
    gradients of q, k and v; a padded key never receives weight."""
    p = 0.25
    q, k, v = _qkv(torch.float32, grad=True)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=masked == "causal")
    mask = None
    if masked == "padding":  # transformers' sdpa mask: True = attend; the second sequence's last 3 keys are pad
        mask = torch.ones(2, 1, 9, 9, dtype=torch.bool)
        mask[1, :, :, 6:] = False
    seen = {}
    real_bits = attention.keep_bits

    def bits(shape, p_, generator=None, device="cpu"):
        seen["keep"] = real_bits(shape, p_, generator, device)
        return seen["keep"]

    monkeypatch.setattr(attention, "keep_bits", bits)
    out, _ = sdpa_cpu(module, q, k, v, mask, dropout=p)
    keep = seen["keep"]
    assert keep.shape == (2, 4, 9, 9) and 0.6 < keep.float().mean() < 0.9
    ref = _reference(q, k, v, mask=mask, keep=keep, p=p, causal=masked == "causal")
    assert torch.allclose(out.double(), ref, atol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, (q, k, v), g)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_grads = torch.autograd.grad(_reference(qd, kd, vd, mask=mask, keep=keep, p=p, causal=masked == "causal"),
                                    (qd, kd, vd), g.double())
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a.double(), b, atol=1e-5)
    if masked == "padding":
        assert grads[2][1, :, 6:].abs().max() == 0  # the padded values get no gradient: no weight on them


def test_dropout_keeps_the_expected_output_and_follows_torchs_seed():
    """E[dropped attention] = attention: the mean over many draws approaches the no-dropout output; the same seed
    draws the same masks."""
    q, k, v = _qkv(torch.float32)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=False)
    clean = sdpa_cpu(module, q, k, v, None)[0]
    torch.manual_seed(5)
    draws = torch.stack([sdpa_cpu(module, q, k, v, None, dropout=0.1)[0] for _ in range(400)])
    assert not torch.equal(draws[0], clean)
    spread = draws.std(0) / 400 ** 0.5
    assert ((draws.mean(0) - clean).abs() <= 5 * spread + 1e-6).all()
    torch.manual_seed(5)
    assert torch.equal(sdpa_cpu(module, q, k, v, None, dropout=0.1)[0], draws[0])


def test_a_row_with_every_key_masked_stays_finite_and_the_rest_defers_to_sdpa():
    q, k, v = _qkv(torch.float32)
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    mask[0, :, 0] = False  # (left padding) a query that may attend to nothing
    out, _ = sdpa_cpu(SimpleNamespace(num_key_value_groups=2, is_causal=False), q, k, v, mask, dropout=0.1)
    assert torch.isfinite(out).all()
    # queries shorter than keys with dropout (not a training step): transformers' sdpa
    q2, k2, v2 = _qkv(torch.float32, q=1, k=9)
    torch.manual_seed(0)
    out, _ = sdpa_cpu(MODULE, q2, k2, v2, None, dropout=0.5)
    assert out.shape == (2, 1, 4, 16) and torch.isfinite(out).all()


def test_a_model_runs_it_by_default_and_trains_as_with_sdpa(tiny_llama, tiny_bert, monkeypatch):
    """The default config loads models with sdpa_cpu (every layer calls it); without dropout and in fp32 a causal LM's
    loss and gradients are sdpa's; under bf16 autocast they stay within bf16 rounding of fp32's."""
    from harness import models
    from harness.runner import build_model

    from transformers import AttentionInterface

    cfg = compose(tiny_overrides(tiny_llama, "llama", "last") + ["method=lora", "lora.targets=qv", "lora.dropout=0"])
    assert cfg.model.attn_implementation == "sdpa_cpu"
    model, *_ = build_model(cfg, tiny_llama)
    assert model.get_base_model().config._attn_implementation == "sdpa_cpu"
    calls = []  # transformers looks the function up at every call: count them
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa_cpu",
                        lambda *a, **kw: calls.append(1) or attention.sdpa_cpu(*a, **kw))
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    batch["attention_mask"][1, 9:] = 0  # padding: the mask path

    def loss_and_grads(m, autocast):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = m(**batch).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in m.parameters() if p.requires_grad]

    ours = loss_and_grads(model, False)
    assert len(calls) == 2  # one per layer
    plain_cfg = compose(tiny_overrides(tiny_llama, "llama", "last") + ["method=lora", "lora.targets=qv",
                                                                       "lora.dropout=0", "model.attn_implementation=null"])
    ref_model, *_ = build_model(plain_cfg, tiny_llama)
    assert ref_model.get_base_model().config._attn_implementation == "sdpa"
    ref = loss_and_grads(ref_model, False)
    assert ours[0] == pytest.approx(ref[0], rel=1e-6)
    for a, b in zip(ours[1], ref[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    bf16 = loss_and_grads(model, True)
    assert bf16[0] == pytest.approx(ref[0], rel=2e-2)
    # BERT (bidirectional, dropout 0.1 in training): the explicit path runs and trains
    clf = models.load_classifier(tiny_bert, compose(tiny_overrides(tiny_bert, "bert", "mean")).model, 2)
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa_cpu",
                        lambda *a, **kw: calls.append(kw.get("dropout")) or attention.sdpa_cpu(*a, **kw))
    calls.clear()
    clf.train()
    out = clf(input_ids=ids % 1000, attention_mask=batch["attention_mask"], labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert calls == [0.1, 0.1] and torch.isfinite(out.loss)
