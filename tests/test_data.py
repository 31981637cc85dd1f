"""GLUE loaders on the real shared files, malformed-file errors, and the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from harness import metrics
from harness.tasks import DataError, find_data_dir, load_task
from harness.tasks.data import load_split
from tests.conftest import DATA, compose

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not beside the repo")

# (task, split, rows, number of classes or None for regression), from shared/data/README.md
LOCAL = [
    ("sst2", "train", 67349, 2), ("sst2", "validation", 872, 2),
    ("mrpc", "train", 3668, 2), ("mrpc", "validation", 408, 2),
    ("rte", "train", 2490, 2), ("rte", "validation", 277, 2),
    ("stsb", "train", 5749, None), ("stsb", "validation", 1500, None),
    ("cola", "train", 8551, 2), ("cola", "validation", 1043, 2),
    ("qnli", "validation", 5463, 2),
    ("mnli", "validation_matched", 1000, 3), ("mnli", "validation_mismatched", 1000, 3),
]


@needs_data
@pytest.mark.parametrize("task,split,rows,classes", LOCAL)
def test_local_glue_files_load_exactly(task, split, rows, classes):
    cfg = compose([f"task={task}"])
    df, src = load_split(cfg.task, split, DATA)
    assert len(df) == rows, src
    assert list(df.columns) == list(cfg.task.text_fields) + ["label"]
    assert df[list(cfg.task.text_fields)].map(len).min().min() > 0
    if classes is None:
        assert df.label.between(0, 5).all()
    else:
        assert set(df.label.unique()) == set(range(classes))


@needs_data
def test_known_label_counts_and_bom():
    mrpc = load_split(compose(["task=mrpc"]).task, "validation", DATA)[0]
    assert (mrpc.label == 1).sum() == 279  # README: dev 1: 279, 0: 129; the BOM'd header parsed
    mnli = load_split(compose(["task=mnli"]).task, "validation_matched", DATA)[0]
    assert (mnli.label == 0).sum() == 373  # entailment 373
    rte = load_split(compose(["task=rte"]).task, "train", DATA)[0]
    assert (rte.label == 0).sum() == 1249  # 0 = entailment


@needs_data
def test_subsets_are_seeded_and_sized():
    cfg = compose(["task=sst2", "task.train_size=100", "task.eval_size=50"])
    a = load_task(cfg.task, DATA, seed=1)
    b = load_task(cfg.task, DATA, seed=1)
    c = load_task(cfg.task, DATA, seed=2)
    assert len(a.train) == 100 and len(a.evals["validation"]) == 50
    assert a.train.equals(b.train) and not a.train.equals(c.train)


def test_missing_task_files_say_where_and_how(tmp_path):
    cfg = compose(["task=rte"])
    with pytest.raises(DataError) as e:
        load_task(cfg.task, tmp_path, seed=0)
    msg = str(e.value)
    assert str(tmp_path / "glue/rte/train.tsv") in msg
    assert "paths.data_dir" in msg and "HARNESS_DATA_DIR" in msg


def test_a_mistyped_local_path_names_the_paths_tried_and_the_exact_hub_dataset(tmp_path, monkeypatch):
    """A causal task whose local file is misspelt: the error lists each local path tried (found or missing) before
    the Hub, and names the Hub dataset as it was asked for (a causal task has no config named after the task)."""
    import datasets

    asked = []

    def offline(path, name=None, split=None):
        asked.append((path, name, split))
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = compose(["model=smollm2_135m", "task=wikisql", "task.local.train=[{path: wikisql/mlx_subset/trian.jsonl}]"])
    with pytest.raises(DataError) as e:
        load_task(cfg.task, DATA, seed=0)
    msg = str(e.value)
    assert f"{DATA / 'wikisql/mlx_subset/trian.jsonl'} (missing)" in msg
    assert "the Hub dataset Salesforce/wikisql, which failed (ConnectionError: offline)" in msg
    assert asked == [("Salesforce/wikisql", None, "train")] and "task.local.train" in msg


def test_data_dir_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_data_dir(str(tmp_path / "nope"))


HEADER = "sentence1\tsentence2\tlabel\tidx\n"


def write_rte(root, text: str):
    d = root / "glue" / "rte"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(text)
    (d / "dev.tsv").write_text(HEADER + "a\tb\t0\t0\n")


@pytest.mark.parametrize("train_tsv,message", [
    (HEADER + "a\tb\t0\t0\nc\td\t1\t1\te\textra\n", r"train\.tsv: malformed row: .*line 3"),
    (HEADER + "a\tb\t0\t0\nc\td\tmaybe\t1\n", r"train\.tsv:3: label 'maybe' is not one of"),
    ("sentence1\tlabel\tidx\na\t0\t0\n", r"missing column\(s\) \['sentence2'\]"),
    ("", "empty"),
], ids=["malformed-row", "bad-label", "missing-column", "empty-file"])
def test_bad_data_files_name_file_line_and_problem(tmp_path, train_tsv, message):
    write_rte(tmp_path, train_tsv)
    with pytest.raises(DataError, match=message):
        load_task(compose(["task=rte"]).task, tmp_path, seed=0)


def test_metrics_match_their_definitions():
    pred, ref = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    got = metrics.compute(["accuracy", "f1", "matthews_correlation"], pred, ref)
    assert got["accuracy"] == 0.75
    assert got["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1
    assert got["matthews_correlation"] == pytest.approx(1 / np.sqrt(3))  # (2*1-1*0)/sqrt(3*2*1*2)
    x, y = np.array([0.0, 1, 2, 3]), np.array([0.0, 2, 4, 7])
    assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert metrics.spearman(x, y) == pytest.approx(1.0)
    assert metrics.pearson(np.ones(4), y) == 0.0  # constant predictor: no correlation, no NaN


def test_classification_metrics_equal_scikit_learn_on_random_and_degenerate_inputs():
    """Our NumPy accuracy, F1 and MCC against scikit-learn's (the reference GLUE scripts use), bit for bit up to
    float rounding: two and three classes, constant predictors, no positives."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 2, 50), rng.integers(0, 2, 50)), (rng.integers(0, 3, 40), rng.integers(0, 3, 40)),
             (np.zeros(10, int), rng.integers(0, 2, 10)), (np.zeros(6, int), np.zeros(6, int)),
             (np.ones(5, int), np.array([1, 0, 1, 0, 1]))]
    for pred, ref in cases:
        assert metrics.accuracy(pred, ref) == pytest.approx(accuracy_score(ref, pred), abs=1e-15)
        assert metrics.matthews_correlation(pred, ref) == pytest.approx(matthews_corrcoef(ref, pred), abs=1e-12)
        if ref.max() <= 1 and pred.max() <= 1:
            assert metrics.f1(pred, ref) == pytest.approx(f1_score(ref, pred, zero_division=0.0), abs=1e-15)


def test_majority_baseline():
    b = metrics.majority_baseline(["accuracy"], [1, 1, 0], [1, 0, 0, 0], regression=False)
    assert b["accuracy"] == 0.25


def test_tasks_without_local_files_load_from_the_hub_by_name(tmp_path, monkeypatch):
    """QQP has no local copy: the loader asks the Hub for nyu-mll/glue, config qqp (stand-in dataset here)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"question1": ["a?", "b?"], "question2": ["c?", "d?"], "label": [0, 1],
                                           "idx": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_task(compose(["task=qqp"]).task, tmp_path, seed=0)
    assert calls == [("nyu-mll/glue", "qqp", "train"), ("nyu-mll/glue", "qqp", "validation")]
    assert list(data.train.columns) == ["question1", "question2", "label"]
    assert data.source["validation"] == "hub:nyu-mll/glue/qqp:validation"
