"""The data loaders under hypothesis: random TSV, JSON Lines, JSON and parquet bytes either load into the task's
canonical columns or raise our DataError with a message naming the file; never any other exception."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from harness.tasks.data import DataError, _load_local  # noqa: E402
from tests.conftest import compose  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TASKS = {name: compose([f"task={name}"] + (["model=smollm2_135m"] if name in ("wikisql", "alpaca") else [])).task
         for name in ("rte", "stsb", "sst2", "wikisql", "alpaca")}
# STS-B (a regression) read from a TSV file
TASKS["stsb_tsv"] = dataclasses.replace(TASKS["stsb"], local={**TASKS["stsb"].local,
                                                         "train": [{"path": "stsb/train.tsv", "format": "tsv"}]})

cell = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
tsv_cell = st.one_of(cell, st.sampled_from(["0", "1", "entailment", "not_entailment", "2.5", "", "\t", "\"", "\n"]))
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | cell,
                          lambda kids: st.lists(kids, max_size=3) | st.dictionaries(cell, kids, max_size=3),
                          max_leaves=6)


def load(task_name: str, split: str, files: dict[str, bytes]):
    """Write `files` under a fresh data directory and load the split; returns the frame or the DataError."""
    task = TASKS[task_name]
    with tempfile.TemporaryDirectory() as d:
        for rel, data in files.items():
            p = Path(d) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        try:
            got = _load_local(Path(d), split, task, {})
        except DataError as e:
            assert str(e) and (d in str(e) or TASKS[task_name].name in str(e)), str(e)  # names the file or task
            return e
    assert got is not None
    df, _ = got
    return df


def local_path(task_name: str, split: str) -> str:
    return TASKS[task_name].local[split][0]["path"]


@FUZZ
@given(header=st.sampled_from(["index\tsentence1\tsentence2\tlabel\n", "sentence1\tsentence2\tlabel\n", "",
                               "sentence1\tlabel\n", "a\tb\tc\td\te\n"]),
       rows=st.lists(st.lists(tsv_cell, min_size=0, max_size=6), max_size=6),
       junk=st.binary(max_size=8))
def test_glue_tsv_loads_or_says_what_is_wrong(header, rows, junk):
    text = header.encode() + "".join("\t".join(r) + "\n" for r in rows).encode() + junk
    out = load("rte", "train", {local_path("rte", "train"): text})
    if not isinstance(out, DataError):
        assert list(out.columns) == ["sentence1", "sentence2", "label"] and len(out) > 0
        assert set(out["label"]) <= {0, 1}


@FUZZ
@given(rows=st.lists(st.tuples(cell, cell, st.one_of(st.floats(allow_nan=True, allow_infinity=True), cell)),
                     max_size=5))
def test_regression_labels_load_as_numbers_or_say_which_line(rows):
    text = "sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows)
    out = load("stsb_tsv", "train", {"stsb/train.tsv": text.encode("utf-8", "replace")})
    if not isinstance(out, DataError):
        assert out["label"].map(lambda v: isinstance(v, float)).all()


@FUZZ
@given(data=st.binary(max_size=64))
def test_parquet_bytes_load_or_say_what_is_wrong(data):
    out = load("sst2", "train", {local_path("sst2", "train"): data})
    assert isinstance(out, DataError)  # random bytes are never a parquet file with the right columns


@FUZZ
@given(lines=st.lists(st.one_of(
    json_value.map(json.dumps),
    st.builds(lambda t: json.dumps({"text": t}), cell),
    st.builds(lambda q, a: json.dumps({"text": f"table: t\ncolumns: a, b\nQ: {q}\nA: {a}"}), cell, cell),
    cell,
), max_size=6), junk=st.binary(max_size=4))
def test_wikisql_jsonl_loads_or_says_which_line(lines, junk):
    data = "\n".join(lines).encode() + junk
    out = load("wikisql", "train", {local_path("wikisql", "train"): data})
    if not isinstance(out, DataError):
        assert {"prompt", "answer"} <= set(out.columns) and out["prompt"].str.endswith("A:").all()


@FUZZ
@given(rows=st.one_of(
    st.lists(st.dictionaries(st.sampled_from(["instruction", "input", "output", "x"]), json_value, max_size=4),
             max_size=4),
    st.lists(st.fixed_dictionaries({"instruction": cell, "output": cell}, optional={"input": st.none() | cell}),
             min_size=1, max_size=4),
    json_value,
))
def test_alpaca_json_loads_or_says_what_is_wrong(rows):
    out = load("alpaca", "train", {local_path("alpaca", "train"): json.dumps(rows).encode()})
    if not isinstance(out, DataError):
        assert out["prompt"].map(lambda v: isinstance(v, str)).all()
        assert out["answer"].map(lambda v: isinstance(v, str)).all()
