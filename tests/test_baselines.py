"""Bi-encoders, baselines as runs, carved validation splits, per-family learning rates, alpha/r held constant."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch

from harness.config import ConfigError, effective_alpha, effective_lr, validate
from tests.conftest import DATA, compose, tiny_overrides
from tests.records_fixture import make_record

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")


def bi_model(path: str, num_labels: int, projection: bool = False):
    from harness.config import ModelConfig, Pooling
    from harness.models import load_classifier

    cfg = ModelConfig(name="tiny", source=path, arch="bert", pooling=Pooling.mean)
    torch.manual_seed(0)
    return load_classifier(path, cfg, num_labels, bi_encoder=True, projection=projection)


def pair_batch(tokenizer_path: str):
    from transformers import AutoTokenizer

    from harness.train import PairCollator

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    a = ["A man is playing a guitar.", "A woman slices an onion.", "Kids play in the park.", "The sky is blue today."]
    b = ["Someone plays the guitar loudly.", "A cat sleeps.", "Children are playing outside.", "It rains."]
    feats = []
    for x, y, label in zip(a, b, [4.2, 0.4, 3.8, 1.0]):
        ea, eb = tok(x), tok(y)
        feats.append({"input_ids": ea["input_ids"], "attention_mask": ea["attention_mask"],
                      "input_ids_b": eb["input_ids"], "attention_mask_b": eb["attention_mask"], "labels": label})
    return PairCollator(tok.pad_token_id, 8)(feats), feats


def mean_pooled(model, ids, mask) -> torch.Tensor:
    """Hand computation: the backbone's hidden states averaged over the real tokens, one example at a time."""
    out = []
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        h = model.backbone(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n]).last_hidden_state[0]
        out.append(h.mean(0))
    return torch.stack(out)


def test_bi_encoder_cosine_and_cosent_loss_match_a_hand_computation(tiny_bert):
    model = bi_model(tiny_bert, 1).eval()
    batch, feats = pair_batch(tiny_bert)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids_b"].shape[1] % 8 == 0
    with torch.no_grad():
        out = model(**batch)
        u = mean_pooled(model, batch["input_ids"], batch["attention_mask"])
        v = mean_pooled(model, batch["input_ids_b"], batch["attention_mask_b"])
    cos = [float(u[i] @ v[i] / (u[i].norm() * v[i].norm())) for i in range(4)]
    assert out.logits.squeeze(-1).tolist() == pytest.approx(cos, abs=1e-5)
    # CoSENT by its definition: log(1 + sum over (i, j) with y_i > y_j of exp(20 (cos_j - cos_i)))
    y = [f["labels"] for f in feats]
    terms = [math.exp(20 * (cos[j] - cos[i])) for i in range(4) for j in range(4) if y[i] > y[j]]
    assert len(terms) == 6 and float(out.loss) == pytest.approx(math.log1p(sum(terms)), rel=1e-4)


def test_bi_encoder_classifiers_read_the_cosine_for_two_classes_and_u_v_distance_for_more(tiny_bert):
    batch, _ = pair_batch(tiny_bert)
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    model = bi_model(tiny_bert, 2).eval()
    model.head.threshold.data.fill_(0.5)
    with torch.no_grad():
        out = model(**batch)
        u = mean_pooled(model, batch["input_ids"], batch["attention_mask"])
        v = mean_pooled(model, batch["input_ids_b"], batch["attention_mask_b"])
    cos = torch.nn.functional.cosine_similarity(u, v)
    z = 20 * (cos - 0.5)  # logistic regression on the cosine: logits (0, scale (cos - threshold))
    assert torch.allclose(out.logits, torch.stack([torch.zeros_like(z), z], -1), atol=1e-4)
    assert float(out.loss) == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.stack([torch.zeros_like(z), z], -1), batch["labels"])), rel=1e-4)
    three = bi_model(tiny_bert, 3).eval()
    batch["labels"] = torch.tensor([1, 0, 2, 0])
    with torch.no_grad():
        out = three(**batch)
        logits = torch.cat([u, v, (u - v).abs()], -1) @ three.head.weight.T + three.head.bias
    assert torch.allclose(out.logits, logits, atol=1e-5)


def test_best_threshold_is_the_one_that_classifies_the_training_pairs_best():
    from harness.baselines import best_threshold

    cos = np.array([0.1, 0.9, 0.4, 0.8, 0.35, 0.7])
    y = np.array([0, 1, 0, 1, 1, 0])
    t, acc = best_threshold(cos, y)
    brute = max(np.mean((cos > c) == y) for c in np.linspace(0, 1, 1001))
    assert acc == pytest.approx(brute) and np.mean((cos > t) == y) == pytest.approx(acc)
    assert best_threshold(np.array([0.2, 0.3]), np.array([1, 1]))[1] == 1.0


@pytest.mark.parametrize("pair,labels,expected", [
    ("cross", 2, lambda h: h * 2 + 2),  # the cross-encoder's head: hidden -> classes
    ("bi", 2, lambda h: 2),  # the bi-encoder's cosine head: threshold and scale
    ("bi", 1, lambda h: h * h + h),  # a bi-encoder regression: the projection
])
def test_head_only_trains_only_the_head(tiny_bert, pair, labels, expected):
    from harness.methods import apply, count_parameters
    from harness.models import load_classifier

    task = "mrpc" if labels == 2 else "stsb"
    cfg = compose([*tiny_overrides(tiny_bert, "bert", "mean"), f"task={task}", f"task.pair_encoding={pair}",
                   "method=head_only"])
    validate(cfg)
    model = load_classifier(tiny_bert, cfg.model, labels, bi_encoder=pair == "bi", projection=True)
    model = apply(model, cfg, gradient_checkpointing=False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("head.") for n in names)
    assert count_parameters(model)["trainable"] == expected(64)


def test_bitfit_trains_the_bias_terms_and_the_head_at_the_adapter_rate(tiny_bert):
    from harness.methods import apply
    from harness.models import load_classifier

    cfg = compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "method=bitfit", "train.lr=1e-3",
                   "train.lr_full=3e-5"])
    validate(cfg)
    model = apply(load_classifier(tiny_bert, cfg.model, 2), cfg, gradient_checkpointing=False)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert trained == biases | head and len(biases - head) > 10  # every bias of the encoder, and the head
    assert effective_lr(cfg) == 1e-3  # not full fine-tuning's rate
    assert effective_lr(compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "method=bitfit",
                                 "train.lr_bitfit=3e-3"])) == 3e-3
    with pytest.raises(ConfigError, match="quantiz"):
        validate(compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "method=bitfit",
                          "method.quant=nf4"]))


def test_zero_shot_model_trains_nothing_and_full_finetuning_everything(tiny_bert):
    from harness.methods import apply, count_parameters
    from harness.models import load_classifier

    for method, trainable in (("zero_shot", 0), ("full", None)):
        cfg = compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=stsb", "task.pair_encoding=bi",
                       f"method={method}"])
        model = apply(load_classifier(tiny_bert, cfg.model, 1, bi_encoder=True), cfg, gradient_checkpointing=False)
        c = count_parameters(model)
        assert c["trainable"] == (c["total"] if trainable is None else trainable)


@pytest.mark.parametrize("overrides,message", [
    (["task=sst2", "method=zero_shot"], "a cross-encoder's fresh head has no zero-shot score"),
    (["task=sst2", "task.pair_encoding=bi"], "needs a sentence-pair task"),
    (["task=mnli", "task.pair_encoding=bi", "method=zero_shot"], "two labels only"),
    (["model=smollm2_135m", "task=wikisql", "method=majority"], "the majority baseline needs a classification"),
    (["model=smollm2_135m", "task=wikisql", "method=head_only"], "its baseline is method=zero_shot"),
    (["task=stsb", "method=lora", "lora.alpha_per_r=0"], "lora.alpha_per_r=0"),
    (["task=stsb", "method=full", "train.lr_full=-1"], "train.lr_full=-1"),
    (["task=stsb", "task.carve_size=0"], "task.carve_size=0"),
])
def test_baselines_that_make_no_sense_are_refused_naming_what_does(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(compose(overrides))


def test_alpha_per_r_keeps_the_lora_scale_and_full_finetuning_has_its_own_lr():
    for r in (1, 4, 64):
        cfg = compose(["method=lora", f"lora.r={r}", "lora.alpha_per_r=2"])
        assert effective_alpha(cfg.lora) == 2 * r
    assert effective_alpha(compose(["lora.r=4", "lora.alpha=16"]).lora) == 16  # the papers' fixed alpha
    cfg = compose(["method=full", "train.lr=1e-3", "train.lr_full=2e-5"])
    assert effective_lr(cfg) == 2e-5
    assert effective_lr(compose(["method=full", "train.lr=1e-3"])) == pytest.approx(1e-4)  # the multiplier
    assert effective_lr(compose(["method=lora", "train.lr=1e-3", "train.lr_full=2e-5"])) == 1e-3
    assert effective_lr(compose(["method=head_only", "train.lr=1e-3", "train.lr_full=2e-5"])) == 1e-3
    assert effective_lr(compose(["method=head_only", "train.lr=1e-3", "train.lr_head=3e-2"])) == 3e-2


@needs_data
@pytest.mark.parametrize("train_size", [None, 1000])
def test_the_carved_split_never_overlaps_the_training_rows(train_size):
    from harness.tasks import find_data_dir, load_task
    from harness.tasks.data import load_split

    cfg = compose(["task=stsb", "task.tune=true", "task.carve_size=300", f"task.train_size={train_size or 'null'}"])
    full, _ = load_split(cfg.task, "train", find_data_dir(None))
    key = lambda df: collections.Counter(zip(df["sentence1"], df["sentence2"], df["label"]))  # noqa: E731
    seen = []
    for seed in (1, 2):
        data = load_task(cfg.task, find_data_dir(None), seed=seed)
        assert list(data.evals) == ["carved"] and len(data.evals["carved"]) == 300
        assert len(data.train) == (train_size or len(full) - 300)
        carved, train = key(data.evals["carved"]), key(data.train)
        # as multisets (STS-B repeats a few pairs): carved + the rest = the file, and training draws from the rest
        assert not (carved + train) - key(full)
        seen.append(carved)
    assert seen[0] == seen[1]  # the same carved rows for every run seed


@needs_data
def test_a_carve_for_a_one_file_task_never_draws_from_its_holdout():
    """Alpaca ships as one file whose seeded holdout is the eval split reports show: choosing a recipe
    (task.tune=true) carves from the rest only."""
    from harness.tasks import find_data_dir, load_task
    from harness.tasks.data import load_split

    base = ["model=smollm2_135m", "task=alpaca"]
    shown = load_task(compose(base).task, find_data_dir(None), seed=1)
    tuned = load_task(compose([*base, "task.tune=true", "task.carve_size=100"]).task, find_data_dir(None), seed=1)
    key = lambda df: collections.Counter(zip(df["prompt"], df["answer"]))  # noqa: E731 (the file repeats a few rows)
    held, carved, rest = key(shown.evals["validation"]), key(tuned.evals["carved"]), key(tuned.train)
    assert sum(carved.values()) == 100 and sum(rest.values()) == len(shown.train) - 100
    assert carved + rest == key(shown.train)  # the carve and what tuning trains on are the training rows, not held
    full, _ = load_split(compose(base).task, "train", find_data_dir(None))
    assert sum(held.values()) == 100 and held + key(shown.train) == key(full)  # held apart from every training row


def test_a_rendered_report_shows_baseline_rows_and_marks_configurations_below_them(tmp_path):
    from harness.report.render import render_experiment

    recs = [make_record(experiment="e", method="lora", targets="qv", seed=s, value=v)
            for s, v in ((1, 0.80), (2, 0.81), (3, 0.82))]
    recs += [make_record(experiment="e", method="lora", targets="q", seed=s, value=v)
             for s, v in ((1, 0.60), (2, 0.62), (3, 0.61))]
    zero = []
    for s in (1, 2, 3):
        r = make_record(experiment="sanity", method="zero_shot", seed=s, value=0.70)
        r["config"]["method"]["baseline"] = "zero_shot"
        r["config_hash"] = f"zero{s}"
        zero.append(r)
    path = render_experiment("e", recs, tmp_path, plots=False, baselines=zero)
    text = path.read_text()
    assert "## Baselines" in text and "Zero-shot" in text and "| sanity |" in text
    assert "1 of 2 fine-tuned configurations are below their best baseline" in text
    assert "61.0 [60.0–62.0]† (3 of 3 below baseline)" in text and "below baseline" in text
    assert "clearly above" in text  # Wq,Wv - zero-shot per seed +10, +11, +12: 95% interval [+8.5, +13.5]
    assert "| +11.0 [+8.5, +13.5] |" in text


def test_the_planner_builds_the_bi_encoder_and_counts_what_each_baseline_trains():
    from harness.plan import make_plan

    base = ["model=minilm_l6", "train.batch_size=16", "train.max_seq_len=32"]
    head = make_plan([*base, "task=mrpc", "task.pair_encoding=bi"], method="head_only")
    assert head.params["trainable"] == 2  # the cosine head: threshold and scale
    proj = make_plan([*base, "task=stsb", "task.pair_encoding=bi"], method="head_only")
    assert proj.params["trainable"] == 384 * 384 + 384  # the projection
    bi = make_plan([*base, "task=stsb", "task.pair_encoding=bi"], method="lora")
    cross = make_plan([*base, "task=stsb", "task.pair_encoding=cross"], method="lora")
    # a bi-encoder runs the encoder twice (each sentence at the planned length): twice the layers' activations
    assert bi.parts["activations"] == pytest.approx(2 * cross.parts["activations"], rel=0.1)


def test_the_sanity_report_calls_a_task_usable_only_when_fine_tuning_clearly_beats_every_baseline(tmp_path):
    import json

    from harness.report.sanity import render

    def rec(task, method, seed, value, baseline="none"):
        r = make_record(experiment="sanity", task=task, method=method, seed=seed, value=value, table="sanity",
                        aggregate="mean")
        r["config"]["method"]["baseline"] = baseline
        r["config_hash"] = f"{task}{method}{seed}"
        return r

    recs = []
    for s, d in ((1, -0.01), (2, 0.0), (3, 0.01)):
        recs += [rec("mrpc", "majority", s, 0.684, "majority"), rec("mrpc", "zero_shot", s, 0.745 + d / 10, "zero_shot"),
                 rec("mrpc", "lora", s, 0.80 + d), rec("mrpc", "full", s, 0.82 + d),
                 rec("stsb", "zero_shot", s, 0.870, "zero_shot"), rec("stsb", "lora", s, 0.86 + d)]
    path = render(recs, tmp_path)
    summary = json.loads((tmp_path / "sanity" / "summary.json").read_text())
    mrpc, stsb = summary["tasks"]["mrpc/minilm_l6"], summary["tasks"]["stsb/minilm_l6"]
    assert mrpc["usable_for_claims"] and not stsb["usable_for_claims"]
    lora = next(r for r in mrpc["rows"] if r["method"] == "lora")
    assert lora["values"] == [79.0, 80.0, 81.0] and lora["best_baseline"]["method"] == "zero_shot"
    assert [r["method"] for r in mrpc["rows"]][:2] == ["majority", "zero_shot"]  # baselines first
    assert "lora below baseline" in stsb["why"]
    text = path.read_text()
    assert "**usable for claims**" in text and "**not usable for claims**" in text
    assert lora["ci95"] == [pytest.approx(77.52, abs=0.01), pytest.approx(82.48, abs=0.01)]  # 80 +- 4.30 * 1 / sqrt(3)
    # per seed +4.6, +5.5, +6.4: sd 0.9, 4.30 * 0.9 / sqrt(3) = 2.24
    assert lora["minus_baseline"].startswith("+5.5 [+3.3, +7.7] (95% interval, paired over seeds 1,2,3)")


def test_claims_on_a_task_sanity_does_not_show_usable_are_not_resolved_and_memory_claims_stay():
    """Issue 15: a local experiment must not test a claim on a task where make sanity does not show fine-tuning
    clearly above its baselines (or has not checked it): the claim keeps its numbers, its verdict is "not
    resolved". Memory claims do not depend on what fine-tuning reaches and are not gated."""
    from harness.report import claims, frame, stats
    from harness.report.sanity import usable_tasks

    def rec(task, method, seed, value, baseline="none", **kw):
        r = make_record(experiment="sanity", task=task, method=method, seed=seed, value=value, table="sanity",
                        aggregate="mean", **kw)
        r["config"]["method"]["baseline"] = baseline
        return r

    sanity = []
    for s, d in ((1, -0.01), (2, 0.0), (3, 0.01)):
        sanity += [rec("mrpc", "zero_shot", s, 0.745 + d / 10, "zero_shot"), rec("mrpc", "lora", s, 0.80 + d),
                   rec("stsb", "zero_shot", s, 0.870, "zero_shot"), rec("stsb", "lora", s, 0.86 + d)]
    usable = usable_tasks(sanity)
    assert usable == {"mrpc/minilm_l6/-": True, "stsb/minilm_l6/-": False}
    assert usable_tasks([]) is None

    grid = [make_record(experiment="t2", table="lora_table2", task=t, method=m, seed=s, value=v + s / 1000,
                        peak_mb=peak)
            for t in ("mrpc", "stsb", "rte") for m, v, peak in (("lora", 0.80, 500.0), ("full", 0.79, 900.0))
            for s in (1, 2, 3)]
    agg = frame.aggregate(frame.runs_frame(frame.latest_per_config(grid)[0]), "median")
    free = claims.check("lora_table2", agg)
    gated = claims.check("lora_table2", agg, usable)
    quality = [c for c in gated if c.table == "lora_table2"]
    assert len(quality) == 3  # one per task once gated
    by_task = {c.claim.split(":")[0]: c for c in quality}
    assert by_task["mrpc/minilm_l6"].verdict == stats.HOLDS
    assert by_task["stsb/minilm_l6"].verdict == stats.UNRESOLVED
    assert "does not show fine-tuning clearly above its baselines" in by_task["stsb/minilm_l6"].evidence
    assert by_task["rte/minilm_l6"].verdict == stats.UNRESOLVED
    assert "has not checked it" in by_task["rte/minilm_l6"].evidence
    assert "LoRA 80.2 vs full 79.2" in by_task["rte/minilm_l6"].evidence  # the numbers stay visible
    memory = lambda found: [(c.claim, c.verdict) for c in found if c.table == "memory"]  # noqa: E731
    assert memory(gated) == memory(free) and len(memory(free)) == 3


def test_a_task_judged_on_its_own_experiments_baselines_is_listed_on_the_sanity_page(tmp_path):
    """A local task make sanity does not run (E2E, Alpaca) is judged by the same rule on the baseline runs of the
    experiment that tests claims on it: that report's summary.json keeps the verdict (own_usable) and the sanity
    page lists it, while a task the sanity runs check is not listed twice."""
    import json

    from harness.report.render import render_experiment
    from harness.report.sanity import render

    def rec(experiment, task, method, seed, value, baseline="none"):
        r = make_record(experiment=experiment, task=task, method=method, seed=seed, value=value)
        r["config"]["method"]["baseline"] = baseline
        r["config_hash"] = f"{experiment}{task}{method}{seed}"
        return r

    sanity = [rec("sanity", "mrpc", m, s, v + s / 100, b) for s in (1, 2, 3)
              for m, v, b in (("zero_shot", 0.70, "zero_shot"), ("lora", 0.78, "none"))]
    grid = [rec("t3", "rte", m, s, v + s / 100, b) for s in (1, 2, 3)
            for m, v, b in (("zero_shot", 0.50, "zero_shot"), ("lora", 0.60, "none"))]
    grid += [rec("t3", "cola", m, s, v, b) for s in (1, 2, 3)
             for m, v, b in (("zero_shot", 0.30, "zero_shot"), ("lora", 0.30 - s / 100, "none"))]
    grid += [rec("t3", "mrpc", "full", s, 0.79, "none") for s in (1, 2, 3)]
    render_experiment("t3", grid, tmp_path, plots=False, usable={"mrpc/minilm_l6/-": True})
    own = json.loads((tmp_path / "t3" / "summary.json").read_text())["own_usable"]
    assert own == {"rte/minilm_l6/-": True, "cola/minilm_l6/-": False}  # mrpc: make sanity's verdict, not its own
    render(sanity, tmp_path)
    text = (tmp_path / "sanity" / "README.md").read_text()
    assert "## Tasks judged in their own experiments" in text
    assert "| rte/minilm_l6 | [t3](../t3/README.md) | **usable for claims** |" in text
    assert "| cola/minilm_l6 | [t3](../t3/README.md) | **not usable for claims** |" in text
    listed = json.loads((tmp_path / "sanity" / "summary.json").read_text())["judged_elsewhere"]
    assert [(x["task"], x["usable_for_claims"]) for x in listed] == [("cola/minilm_l6/-", False),
                                                                   ("rte/minilm_l6/-", True)]


def test_a_collapsed_seed_is_counted_apart_and_keeps_a_task_from_claims(tmp_path):
    import json

    from harness.report.sanity import render

    def rec(method, seed, value, baseline="none"):
        r = make_record(experiment="sanity", task="mrpc", method=method, seed=seed, value=value, table="sanity",
                        aggregate="mean")
        r["config"]["method"]["baseline"] = baseline
        r["config_hash"] = f"{method}{seed}"
        return r

    recs = [rec("majority", s, 0.684, "majority") for s in (1, 2, 3)]
    recs += [rec("zero_shot", s, 0.70 + s / 1000, "zero_shot") for s in (1, 2, 3)]
    recs += [rec("lora", 1, 0.80), rec("lora", 2, 0.81), rec("lora", 3, 0.684)]  # seed 3 predicts the majority class
    for r in recs:  # the grid's note (why fewer than 200 steps) reaches the page once
        r["config"]["report"]["note"] = "100 optimizer steps, not 200: measured flat."
    render(recs, tmp_path)
    assert (tmp_path / "sanity" / "README.md").read_text().count("Note: 100 optimizer steps, not 200") == 1
    task = json.loads((tmp_path / "sanity" / "summary.json").read_text())["tasks"]["mrpc/minilm_l6"]
    lora = next(r for r in task["rows"] if r["method"] == "lora")
    assert lora["collapsed"] == 1 and lora["seeds_below_baseline"] == 1
    assert not task["usable_for_claims"] and "1 seed(s) collapsed" in task["why"]
    assert "1 collapsed" in (tmp_path / "sanity" / "README.md").read_text()


@needs_data
def test_baselines_and_a_bi_encoder_run_are_ordinary_records(tiny_bert, tmp_path, caplog):
    """majority, zero-shot, head-only and LoRA on MRPC as a bi-encoder (tiny random BERT, 64 pairs): each a record
    of the usual shape, and every two-class bi-encoder starts from the cosine threshold fit on its train pairs."""
    import logging

    from harness.runner import execute

    caplog.set_level(logging.INFO, logger="harness.progress")
    base = [*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "task.pair_encoding=bi", "task.train_size=64",
            "task.eval_size=32", "train.batch_size=16", "train.threads=1", "method.compute_dtype=fp32",
            f"paths.output_root={tmp_path}"]
    recs = {}
    for method in ("majority", "zero_shot", "head_only", "lora"):
        recs[method] = execute(compose([*base, f"method={method}"]), tmp_path / method)
        assert recs[method]["status"] == "ok" and (tmp_path / method / "record.json").is_file()
        assert recs[method]["metrics"]["headline"] == {"split": "validation", "metric": "accuracy"}
    assert recs["majority"]["params"]["total"] == 0 and recs["majority"]["steps"] == 0
    assert recs["zero_shot"]["steps"] == 0 and recs["zero_shot"]["params"]["trainable"] == 0
    t = recs["zero_shot"]["cosine_threshold"]["threshold"]
    assert recs["lora"]["cosine_threshold"]["threshold"] == t  # the same start (LoRA is the identity at init)
    # the untrained encoder's cosines are computed once (zero-shot, the first) and read back by the others
    assert [recs[m]["cosine_threshold"]["cosines"] for m in ("zero_shot", "head_only", "lora")] == [
        "computed", "cached", "cached"]
    assert len(list((tmp_path / "cache" / "zero_shot_cosines").glob("*.npy"))) == 1
    assert recs["head_only"]["params"]["trainable"] == 2 and recs["head_only"]["steps"] == 4
    # a run shows its progress (off a terminal: log lines, the last at 100%)
    shown = [r.getMessage() for r in caplog.records if r.name == "harness.progress"]
    assert any(m.startswith("train 4/4 (100%) | loss ") and "ETA 0 s" in m for m in shown), shown
    assert recs["lora"]["model"]["head"] == "bi_encoder_cosine_threshold"
    assert recs["lora"]["task"]["pair_encoding"] == "bi" and recs["lora"]["method"]["baseline"] == "none"
    # per-example predictions beside the record (for a paired bootstrap): they give back the recorded accuracy
    from harness.report.examples import load, scorer

    for method in ("zero_shot", "lora"):
        p = load({"_dir": str(tmp_path / method)}, "validation")
        assert len(p["gold"]) == 32
        acc = scorer("accuracy", p)(np.arange(32))
        assert acc == pytest.approx(recs[method]["metrics"]["final"]["validation"]["accuracy"])


def test_the_encoder_digest_is_the_base_weights_until_an_adapter_changes_the_output(tiny_bert):
    """LoRA at init (B = 0) computes exactly the base encoder: the same digest, so the zero-shot cosines are shared;
    a LoRA B that moved, or a changed weight, gives another digest or none; a quantized weight gives none."""
    from peft import LoraConfig, get_peft_model

    from harness.baselines import encoder_digest

    base = bi_model(tiny_bert, 2)
    d0 = encoder_digest(base.backbone)
    assert d0 is not None and d0 == encoder_digest(bi_model(tiny_bert, 2).backbone)
    lora = get_peft_model(bi_model(tiny_bert, 2), LoraConfig(r=4, target_modules=["query", "value"]))
    assert encoder_digest(lora.get_base_model().backbone) == d0
    batch, _ = pair_batch(tiny_bert)
    with torch.no_grad():
        same = torch.equal(lora.get_base_model().encode(batch["input_ids"], batch["attention_mask"]),
                           base.encode(batch["input_ids"], batch["attention_mask"]))
        assert same  # what the shared digest promises: bit for bit the same cosines
        next(p for n, p in lora.named_parameters() if "lora_B" in n).add_(0.01)
    assert encoder_digest(lora.get_base_model().backbone) is None
    with torch.no_grad():
        base.backbone.embeddings.word_embeddings.weight[0, 0] += 1.0
    assert encoder_digest(base.backbone) not in (None, d0)
    import bitsandbytes as bnb

    q = bi_model(tiny_bert, 2)
    lin = q.backbone.encoder.layer[0].attention.self.query
    q.backbone.encoder.layer[0].attention.self.query = bnb.nn.Linear8bitLt(
        lin.in_features, lin.out_features, has_fp16_weights=False)
    assert encoder_digest(q.backbone) is None
