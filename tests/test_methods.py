"""Correctness of the methods on tiny random models (real tokenizers, real bitsandbytes)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from harness import catalog, methods, models
from harness.config import effective_rank
from tests.conftest import compose, tiny_overrides

METHODS = catalog.fine_tuning_methods()  # every conf/method/ entry that trains a real storage type


def build(path: str, arch: str, pooling: str, extra: list[str], num_labels: int = 2):
    cfg = compose(tiny_overrides(path, arch, pooling) + ["method.compute_dtype=fp32"] + extra)
    bnb = methods.bnb_config(cfg.method, torch.float32)
    torch.manual_seed(0)
    model = models.load_classifier(path, cfg.model, num_labels, quantization_config=bnb, device="cpu")
    return cfg, methods.apply(model, cfg, gradient_checkpointing=False)


def batch(path: str, n: int = 4):
    tok = models.load_tokenizer(path, compose().model)
    texts = ["a gripping, funny film", "dull and far too long", "the cast is wonderful", "i want my money back",
             "not bad at all", "an utter mess"][:n]
    enc = tok(texts, padding=True, return_tensors="pt")
    enc["labels"] = torch.tensor([1, 0, 1, 0, 1, 0][:n])
    return enc


def adamw_losses(model, x, lr: float, steps: int) -> list[float]:
    """The loss of batch `x` before each of `steps` AdamW steps on the model's trainable parameters."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**x).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return losses


def randomize_lora_b(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("arch_fixture,arch,pooling", [("tiny_bert", "bert", "cls"), ("tiny_llama", "llama", "last")])
def test_lora_at_init_leaves_outputs_unchanged(request, arch_fixture, arch, pooling):
    path = request.getfixturevalue(arch_fixture)
    cfg = compose(tiny_overrides(path, arch, pooling) + ["lora.targets=all_linear", "lora.dropout=0"])
    torch.manual_seed(0)
    base = models.load_classifier(path, cfg.model, 2).eval()
    x = batch(path)
    x.pop("labels")
    with torch.no_grad():
        before = base(**x).logits.clone()
        wrapped = methods.apply(copy.deepcopy(base), cfg, gradient_checkpointing=False).eval()
        after = wrapped(**x).logits
    assert torch.equal(before, after)  # B = 0: the adapter adds exactly zero


@pytest.mark.parametrize("targets", ["q", "qv", "qkvo", "all_linear"])
@pytest.mark.parametrize("arch_fixture,arch,pooling", [("tiny_bert", "bert", "cls"), ("tiny_llama", "llama", "last")])
def test_trainable_parameters_equal_closed_form(request, arch_fixture, arch, pooling, targets):
    path = request.getfixturevalue(arch_fixture)
    r = 4
    cfg, model = build(path, arch, pooling, [f"lora.targets={targets}", f"lora.r={r}"])
    base = model.get_base_model()
    suffixes = list(model.peft_config["default"].target_modules)
    expected = 0
    for name, m in base.named_modules():
        if hasattr(m, "base_layer") and any(name == s or name.endswith("." + s) for s in suffixes):
            lin = m.base_layer
            expected += r * (lin.in_features + lin.out_features)
    hidden = base.backbone.config.hidden_size
    head = hidden * 2 + 2
    counts = methods.count_parameters(model)
    assert expected > 0
    assert counts["trainable"] == expected + head
    assert methods.adapter_parameters(model) == expected
    # total counts the model once (not peft's frozen head copy) and matches the unwrapped model
    plain = models.load_classifier(path, cfg.model, 2)
    assert counts["total"] == sum(p.numel() for p in plain.parameters()) + expected
    if targets == "all_linear":
        n_linear = len([n for n in methods.linear_module_names(plain) if "head" not in n and "pooler" not in n])
        assert len([n for n, _ in base.named_modules() if n.endswith("lora_A")]) == n_linear


def test_rank_budget_derives_r_as_in_table_5():
    cfg = compose(["lora.rank_budget=8", "lora.targets=q"])
    assert effective_rank(cfg.lora) == 8
    cfg = compose(["lora.rank_budget=8", "lora.targets=qv"])
    assert effective_rank(cfg.lora) == 4
    cfg = compose(["lora.rank_budget=8", "lora.targets=qkvo"])
    assert effective_rank(cfg.lora) == 2


@pytest.mark.parametrize("method", ["qlora_nf4", "qlora_fp4", "qlora_nf4_dq"])
def test_lora_gradients_through_4bit_match_dequantized_fp32_reference(tiny_llama, method):
    """bitsandbytes' CPU 4-bit path vs an fp32 model holding the same (dequantized) weights."""
    import bitsandbytes.functional as bnbf

    extra = [f"method={method}", "lora.targets=qv", "lora.dropout=0", "lora.r=4"]
    cfg, qmodel = build(tiny_llama, "llama", "last", extra)
    rcfg, ref = build(tiny_llama, "llama", "last", extra[1:] + ["method=lora"])
    # the reference holds exactly the dequantized weights the 4-bit model computes with
    qmods = dict(qmodel.named_modules())
    n_quant = 0
    with torch.no_grad():
        for name, m in ref.named_modules():
            q = qmods[name]
            if type(q).__name__ == "Linear4bit":
                m.weight.copy_(bnbf.dequantize_4bit(q.weight.data, q.weight.quant_state).float())
                n_quant += 1
        randomize_lora_b(qmodel)
        ref.load_state_dict({k: v for k, v in qmodel.state_dict().items() if "lora_" in k or "head" in k}, strict=False)
    assert n_quant == 2 * 7  # every linear layer of both blocks is 4-bit
    qmodel.eval(), ref.eval()
    x = batch(tiny_llama)
    lq = qmodel(**x).loss
    lr_ = ref(**x).loss
    lq.backward()
    lr_.backward()
    assert torch.allclose(lq, lr_, rtol=1e-5, atol=1e-6)
    rgrads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    checked = 0
    for n, p in qmodel.named_parameters():
        if p.requires_grad and "lora_" in n:
            g, gr = p.grad, rgrads[n]
            assert g is not None and gr.abs().max() > 0, n
            # stated tolerance: relative error of the gradient tensor below 1e-4
            assert (g - gr).norm() / gr.norm() < 1e-4, (n, ((g - gr).norm() / gr.norm()).item())
            checked += 1
    assert checked == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


def test_4bit_gradients_survive_an_evaluation_under_no_grad(tiny_llama):
    """bitsandbytes repacks 4-bit weights into an inference-only layout on an eval-mode, no-grad forward (CPUs with
    AVX512-BF16); training after that lost every gradient below the top layer. methods.apply switches it off:
    the gradients after an evaluation equal those before."""
    import bitsandbytes as bnb

    extra = ["method=qlora_nf4", "lora.targets=qv", "lora.dropout=0", "lora.r=4"]
    cfg, q = build(tiny_llama, "llama", "last", extra)
    with torch.no_grad():
        randomize_lora_b(q)
    x = batch(tiny_llama)

    def grads():
        q.train()
        q.zero_grad()
        torch.manual_seed(0)  # the head's dropout
        q(**x).loss.backward()
        return {n: p.grad.clone() for n, p in q.named_parameters() if p.requires_grad and "lora_" in n}

    before = grads()
    q.eval()
    with torch.no_grad():
        q(**x)
    layers = [m for m in q.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    after = grads()
    assert len(before) == 2 * 2 * 2
    for n, g in before.items():
        assert torch.equal(after[n], g), n


@pytest.mark.parametrize("method,expected", [
    ("qlora_nf4", 4 + 32 / 64),
    ("qlora_fp4", 4 + 32 / 64),
    ("qlora_nf4_dq", 4 + 8 / 64 + 32 / (64 * 256)),
    ("qlora_fp4_dq", 4 + 8 / 64 + 32 / (64 * 256)),
])
def test_stored_bits_per_parameter(tiny_llama, method, expected):
    _, model = build(tiny_llama, "llama", "last", [f"method={method}"])
    layers = methods.quantized_storage(model)
    assert len(layers) == 14
    exact = [ly for ly in layers if ly["numel"] % (64 * 256) == 0]  # whole second-level blocks
    assert exact
    for ly in exact:
        assert ly["bits_per_param"] == pytest.approx(expected, abs=1e-12), ly
    for ly in layers:  # partial second-level blocks cost at most one extra fp32 constant
        assert expected - 1e-12 <= ly["bits_per_param"] <= expected + 32 / ly["numel"] + 1e-12


def test_int8_storage_is_one_byte_per_weight_plus_row_scales(tiny_llama):
    _, model = build(tiny_llama, "llama", "last", ["method=qlora_int8"])
    layers = methods.quantized_storage(model)
    assert len(layers) == 14
    for ly in layers:
        assert ly["weight_bytes"] == ly["numel"]


def test_merge_and_unload_matches_unmerged(tiny_bert):
    cfg, model = build(tiny_bert, "bert", "cls", ["lora.targets=qkvo", "lora.dropout=0"])
    randomize_lora_b(model)
    model.eval()
    x = batch(tiny_bert)
    x.pop("labels")
    with torch.no_grad():
        unmerged = model(**x).logits.clone()
        merged = model.merge_and_unload()
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        out = merged(**x).logits
    assert not torch.equal(unmerged, models.load_classifier(tiny_bert, cfg.model, 2).eval()(**x).logits)
    torch.testing.assert_close(out, unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_two_steps_and_loss_goes_down(tiny_llama, method):
    cfg, model = build(tiny_llama, "llama", "last", [f"method={method}", "lora.dropout=0", "lora.r=8"])
    model.train()
    x = batch(tiny_llama, n=6)
    losses = adamw_losses(model, x, lr=3e-4 if method == "full" else 5e-3, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[2] < losses[0], losses


def test_unknown_target_in_model_names_its_linear_modules(tiny_bert):
    from harness.config import ConfigError

    cfg = compose(tiny_overrides(tiny_bert, "bert", "cls"))
    model = models.load_classifier(tiny_bert, cfg.model, 2)
    with pytest.raises(ConfigError, match=r"no such linear module.*'query'"):
        methods.target_modules("llama", "q", model)  # Llama names on a BERT model


def test_bnb_config_is_exact_per_method():
    for name, quant, dq in [("qlora_fp4", "fp4", False), ("qlora_nf4_dq", "nf4", True)]:
        cfg = compose([f"method={name}", "method.compute_dtype=bf16"])
        b = methods.bnb_config(cfg.method, torch.bfloat16)
        assert b.load_in_4bit and b.bnb_4bit_quant_type == quant and b.bnb_4bit_use_double_quant is dq
        assert b.bnb_4bit_compute_dtype == torch.bfloat16
    cfg = compose(["method=qlora_int8"])
    assert methods.bnb_config(cfg.method, torch.float32).load_in_8bit
    assert methods.bnb_config(compose(["method=lora"]).method, torch.float32) is None


def test_each_process_of_a_multi_gpu_launch_loads_onto_its_own_gpu(tiny_bert, monkeypatch):
    """Under accelerate launch / torchrun (LOCAL_RANK set), rank r puts its model, quantized or not, on GPU r of its
    node; computed from the launcher's environment, no GPU needed."""
    from harness import models

    assert models.placement({}, cuda=False) == "cpu"
    assert models.placement({"LOCAL_RANK": "1"}, cuda=False) == "cpu"
    assert models.placement({}, cuda=True) == "cuda:0"
    launch = [{"LOCAL_RANK": str(r), "RANK": str(2 + r), "WORLD_SIZE": "4"} for r in (0, 1)]  # node 2 of 2
    assert [models.placement(env, cuda=True) for env in launch] == ["cuda:0", "cuda:1"]
    with pytest.raises(models.ModelError, match="LOCAL_RANK='x'"):
        models.placement({"LOCAL_RANK": "x"}, cuda=True)

    class Stop(Exception):
        pass

    seen = {}

    def capture(auto_cls, path, model_cfg, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(models, "_from_pretrained", capture)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from harness.config import ModelConfig, Pooling

    cfg = ModelConfig(name="tiny", source=tiny_bert, arch="bert", pooling=Pooling.mean)
    for env in launch:
        monkeypatch.setenv("LOCAL_RANK", env["LOCAL_RANK"])
        with pytest.raises(Stop):
            models.load_classifier(tiny_bert, cfg, 2, quantization_config=object(), bi_encoder=True)
        assert seen["device_map"] == {"": f"cuda:{env['LOCAL_RANK']}"}


@pytest.mark.parametrize("init", ["gaussian", "pissa", "olora"])
def test_lora_init_options_start_as_the_base_model_and_reach_peft(tiny_bert, init):
    """lora.init reaches peft's init_lora_weights; every init starts from the base model's outputs (gaussian: B = 0;
    PiSSA / OLoRA: the base keeps the residual W - B A), the latter within float rounding."""
    cfg = compose(tiny_overrides(tiny_bert, "bert", "cls") + ["lora.targets=qv", "lora.dropout=0"])
    torch.manual_seed(0)
    base = models.load_classifier(tiny_bert, cfg.model, 2).eval()
    x = batch(tiny_bert)
    x.pop("labels")
    _, wrapped = build(tiny_bert, "bert", "cls", ["lora.targets=qv", "lora.dropout=0", f"lora.init={init}"])
    assert wrapped.peft_config["default"].init_lora_weights == init
    with torch.no_grad():
        before, after = base(**x).logits, wrapped.eval()(**x).logits
    assert torch.allclose(before, after, atol=1e-4)
    b_zero = all(not p.any() for n, p in wrapped.named_parameters() if "lora_B" in n)
    assert b_zero == (init == "gaussian")  # PiSSA / OLoRA put the weight's principal part in A and B


def test_rslora_and_dora_reach_peft_and_dora_adds_a_magnitude_per_output(tiny_bert):
    _, plain = build(tiny_bert, "bert", "cls", ["lora.targets=qv", "lora.r=4", "lora.alpha=8"])
    _, rs = build(tiny_bert, "bert", "cls", ["lora.targets=qv", "lora.r=4", "lora.alpha=8", "lora.use_rslora=true"])
    layer = lambda m: next(mod for n, mod in m.named_modules() if n.endswith("attention.self.query"))  # noqa: E731
    assert layer(plain).scaling["default"] == 8 / 4 and layer(rs).scaling["default"] == 8 / 4 ** 0.5
    _, dora = build(tiny_bert, "bert", "cls", ["lora.targets=qv", "lora.r=4", "lora.use_dora=true"])
    mags = [p for n, p in dora.named_parameters() if "lora_magnitude_vector" in n]
    assert len(mags) == 2 * 2 and all(p.requires_grad and p.numel() == 64 for p in mags)  # 2 layers x (q, v)


def test_peft_options_are_checked_and_leave_older_hashes_alone():
    from harness.config import ConfigError, resolved, validate
    from harness.records import config_hash

    with pytest.raises(Exception) as e:
        compose(["lora.init=svd"])
    assert "Invalid value 'svd', expected one of [default, gaussian, pissa, olora]" in str(e.value.__cause__)
    with pytest.raises(ConfigError, match="lora.init=pissa rewrites the base weights.*qlora_nf4"):
        validate(compose(["method=qlora_nf4", "lora.init=pissa"]))
    validate(compose(["method=qlora_nf4", "lora.use_dora=true", "lora.init=gaussian"]))
    # a run at the defaults hashes as it did before the keys existed (resume and seed grouping keep working)
    plain = resolved(compose(["method=lora"]))
    old = copy.deepcopy(plain)
    for k in ("use_rslora", "use_dora", "init"):
        del old["lora"][k]
    assert config_hash(plain) == config_hash(old)
    assert config_hash(resolved(compose(["method=lora", "lora.use_dora=true"]))) != config_hash(plain)


def test_another_model_under_a_shipped_models_name_is_refused_before_loading(tiny_bert, tmp_path):
    """model=minilm_l6 model.source=<another model>: the run would be recorded, planned and reported as MiniLM.
    It fails naming what differs; with a name and shape of its own it runs."""
    from harness.runner import execute

    base = ["model=minilm_l6", f"model.source={tiny_bert}", "task.train_size=16", "task.eval_size=8",
            "train.max_steps=1", "train.threads=1", f"paths.output_root={tmp_path}"]
    with pytest.raises(models.ModelError, match=r"not the model this config describes: hidden_size 64 \(model.shape "
                                                r"says 384\); num_hidden_layers 2 \(model.shape says 6\)"):
        execute(compose(base), tmp_path / "refused")
    rec = execute(compose([*base, "model.name=tiny", "model.shape=null"]), tmp_path / "own_name")
    assert rec["status"] == "ok" and rec["model"]["name"] == "tiny"


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory, minilm_path) -> str:
    """An architecture the harness has no entry for: a 2-layer random DistilBERT, whose attention projections are
    q_lin / k_lin / v_lin / out_lin, with MiniLM's tokenizer (no token type ids: DistilBERT takes none)."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_distilbert")
    DistilBertModel(DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                     max_position_embeddings=128)).save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.save_pretrained(d)
    return str(d)


def new_model_yaml(folder: Path, source: str) -> list[str]:
    """A model of a new architecture as a user adds one: one YAML file in a config folder of theirs, found through
    hydra.searchpath (the same file in conf/model/ needs no searchpath)."""
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / "tiny_distilbert.yaml").write_text(
        f"name: tiny_distilbert\nsource: {source}\narch: distilbert\nkind: encoder\npooling: mean\n"
        "max_position: 128\ntargets: {q: [q_lin], k: [k_lin], v: [v_lin], o: [out_lin]}\n")
    return [f"hydra.searchpath=[file://{folder}]", "model=tiny_distilbert"]


@pytest.mark.parametrize("targets,per_layer", [("qv", 2), ("qkvo", 4), ("all_linear", 6)])
def test_a_model_of_a_new_architecture_is_one_yaml_file(tiny_distilbert, tmp_path, targets, per_layer):
    """model.kind and model.targets in the model's YAML are all a new architecture needs: the targets are checked
    on the meta device from the folder's config, and LoRA trains on them."""
    from harness.config import validate

    cfg = compose(new_model_yaml(tmp_path / "conf", tiny_distilbert) +
                  [f"lora.targets={targets}", "lora.dropout=0", "method.compute_dtype=fp32"])
    validate(cfg)
    names = methods.check_targets(cfg, tiny_distilbert)
    if targets != "all_linear":
        assert names == {"qv": ["q_lin", "v_lin"], "qkvo": ["q_lin", "k_lin", "v_lin", "out_lin"]}[targets]
    torch.manual_seed(0)
    model = methods.apply(models.load_classifier(tiny_distilbert, cfg.model, 2), cfg, gradient_checkpointing=False)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert len(adapted) == 2 * per_layer  # 2 layers
    model.eval()  # no dropout: the loss of the same batch must fall step by step
    x = batch(tiny_distilbert, n=6)
    losses = adamw_losses(model, x, lr=5e-3, steps=4)
    assert losses[3] < losses[0], losses


def test_a_new_architecture_without_its_kind_or_targets_is_refused_with_the_fix(tiny_distilbert):
    from harness.config import ConfigError, validate

    base = [f"model.source={tiny_distilbert}", "model.name=tiny_distilbert", "model.arch=distilbert",
            "model.shape=null"]
    with pytest.raises(ConfigError, match=r"model.arch='distilbert' is not a known architecture.*model.kind"):
        validate(compose(base))
    cfg = compose(base + ["model.kind=encoder", "lora.targets=qv"])
    validate(cfg)
    with pytest.raises(ConfigError, match=r"no target mapping.*model.targets"):
        methods.check_targets(cfg, tiny_distilbert)
    with pytest.raises(ConfigError, match=r"unknown matrix letters \['x'\]"):
        validate(compose(base + ["model.kind=encoder", "+model.targets.x=[q_lin]"]))
    cfg = compose(base + ["model.kind=encoder", "+model.targets.q=[query]", "lora.targets=q"])
    with pytest.raises(ConfigError, match=r"maps to 'query' in model.targets.*'q_lin'"):
        methods.check_targets(cfg, tiny_distilbert)


def test_auto_computes_in_bf16_only_where_the_cpu_has_native_bf16_and_torch_may_use_it():
    from harness.methods import host_has_bf16

    epyc = "flags : fpu avx2 avx512f avx512_bf16 avx512_vnni"
    xeon = "flags : fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
    assert host_has_bf16(epyc, "ALL", "AVX512") and host_has_bf16(xeon, "ALL", "AVX512")
    assert host_has_bf16(xeon, "AVX512_CORE_AMX", "AVX512") and host_has_bf16(epyc, "AVX512_CORE_BF16", "AVX512")
    assert not host_has_bf16("flags : fpu avx2 avx512f", "ALL", "AVX512")  # AVX-512 without bf16 instructions
    assert not host_has_bf16(epyc, "AVX2", "AVX512") and not host_has_bf16(epyc, "ALL", "AVX2")  # emulating AVX2
    assert not host_has_bf16(epyc, "AVX512_CORE", "AVX512")  # oneDNN held below bf16
