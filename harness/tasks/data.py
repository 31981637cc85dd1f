"""Load a GLUE-style task into canonical columns: the task's text fields plus `label`.

Local files are described in the task's YAML (`local:`), read exactly as shipped (parquet; GLUE TSVs with a
UTF-8 BOM; headerless TSVs), and checked row by row: a malformed row is an error naming the file and line.
Where no data directory holds the task, the split is loaded from the Hub by name (`hub_id`, `hub_config`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from harness.config import is_causal, is_regression

ENV_VAR = "HARNESS_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


class DataError(ValueError):
    """Data is missing or malformed; the message names the file (and line) and what to do."""


@dataclass
class TaskData:
    train: pd.DataFrame
    evals: dict[str, pd.DataFrame]  # split name -> frame
    source: dict[str, str]  # split name -> where it was read from
    tables: Optional[dict] = None  # WikiSQL table id -> {header, types, rows} (execution accuracy)


def find_data_dir(configured: Optional[str]) -> Optional[Path]:
    """paths.data_dir, else $HARNESS_DATA_DIR, else ../shared/data beside the repo; None means the Hub."""
    for cand in (configured, os.environ.get(ENV_VAR)):
        if cand:
            if cand == "hub":
                return None
            p = Path(cand).expanduser()
            if not p.is_dir():
                raise DataError(
                    f"data directory {str(p)!r} does not exist (from paths.data_dir or ${ENV_VAR}); "
                    f"point paths.data_dir=... or ${ENV_VAR} at a folder holding the task files, "
                    "or use paths.data_dir=hub to load from the Hugging Face Hub"
                )
            return p
    return DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.is_dir() else None


def _label_to_id(value, labels: list[str], where: str) -> int:
    s = str(value).strip()
    if s in labels:
        return labels.index(s)
    try:
        i = int(float(s))
    except ValueError:
        i = None
    if i is not None and float(s) == i and 0 <= i < len(labels):
        return i
    raise DataError(f"{where}: label {value!r} is not one of {labels} nor a class id 0..{len(labels) - 1}")


def _read_table(path: Path, spec: dict) -> tuple[pd.DataFrame, int]:
    """Returns the frame and the file line number of its first data row."""
    fmt = spec.get("format", "tsv")
    if fmt == "parquet":
        try:
            return pd.read_parquet(path), 1
        except Exception as e:  # pyarrow's ArrowInvalid and friends: not a readable parquet file
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {str(e)[:200]})") from None
    if fmt not in ("tsv", "csv"):
        raise DataError(f"{path}: unknown format {fmt!r}; valid: parquet, tsv, csv")
    header = spec.get("header", True)
    names = spec.get("columns")
    sep = "\t" if fmt == "tsv" else ","
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            names=None if header else list(names),
            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
            encoding=spec.get("encoding", "utf-8-sig"),
            dtype=str,
            keep_default_na=False,
            on_bad_lines="error",
            engine="c",
        )
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed row: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {spec.get('encoding', 'utf-8-sig')} text ({e})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    return df, 2 if header else 1


def _canonical(df: pd.DataFrame, first_line: int, path: Path, spec: dict, task) -> pd.DataFrame:
    rename = dict(spec.get("rename", {}) or {})
    missing = [c for c in rename if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {list(df.columns)}")
    df = df.rename(columns=rename)
    need = list(task.text_fields) + ["label"]
    absent = [c for c in need if c not in df.columns]
    if absent:
        raise DataError(f"{path}: missing column(s) {absent} for task {task.name!r}; the file has {list(df.columns)}")
    df = df[need].copy()
    if len(df) == 0:
        raise DataError(f"{path}: no data rows")
    for c in task.text_fields:
        bad = df[c].isna()
        if bad.any():
            line = first_line + int(bad.to_numpy().nonzero()[0][0])
            raise DataError(f"{path}:{line}: empty text in column {c!r}")
        df[c] = df[c].astype(str)
    labels = df["label"].tolist()
    regression = is_regression(task)
    out = []
    for i, v in enumerate(labels):
        where = f"{path}:{first_line + i}"
        if regression:
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                raise DataError(f"{where}: label {v!r} is not a number (task {task.name!r} is a regression)") from None
        else:
            out.append(_label_to_id(v, list(task.labels), where))
    df["label"] = out
    return df.reset_index(drop=True)


def _read_glue_file(path: Path, spec: dict, task, data_dir: Path, ctx: dict) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(path)
    df, first = _read_table(path, spec)
    return _canonical(df, first, path, spec, task)


def _read_causal_file(path: Path, spec: dict, task, data_dir: Path, ctx: dict) -> pd.DataFrame:
    from harness.tasks.causal import FormatError, convert, read_file

    try:
        return convert(read_file(path, spec, task, data_dir, ctx), str(path), task, ctx, spec)
    except FormatError as e:
        raise DataError(str(e)) from None


def _load_local(data_dir: Path, split: str, task, ctx: dict) -> Optional[tuple[pd.DataFrame, str]]:
    """The split's local files (task.local), read and concatenated; None when any is absent."""
    specs = (task.local or {}).get(split)
    if not specs:
        return None
    read = _read_causal_file if is_causal(task) else _read_glue_file
    frames, paths = [], []
    for spec in specs:
        path = data_dir / spec["path"]
        if not path.exists():
            return None
        try:
            frames.append(read(path, spec, task, data_dir, ctx))
        except FileNotFoundError:
            return None
        paths.append(str(path))
    return pd.concat(frames, ignore_index=True), " + ".join(paths)


def _hub_name(task) -> Optional[str]:
    """The Hub dataset's config name: task.hub_config, else the GLUE task's name (a causal task's dataset: none)."""
    return task.hub_config or (None if is_causal(task) else task.name)


def _load_hub(split: str, task, ctx: dict) -> tuple[pd.DataFrame, str]:
    import datasets

    name = _hub_name(task)
    where = f"hub:{task.hub_id}/{name}:{split}"
    df = datasets.load_dataset(task.hub_id, name, split=split).to_pandas()
    rename = dict(task.hub_rename or {})
    if is_causal(task):
        from harness.tasks.causal import convert

        return convert(df.rename(columns=rename).to_dict("records"), where, task, ctx), where
    return _canonical(df, 1, Path(where), {"rename": rename}, task), where


def load_split(task, split: str, data_dir: Optional[Path], ctx: Optional[dict] = None) -> tuple[pd.DataFrame, str]:
    ctx = {} if ctx is None else ctx
    looked = []
    if data_dir is not None:
        got = _load_local(data_dir, split, task, ctx)
        if got is not None:
            return got
        specs = (task.local or {}).get(split) or []
        looked = [f"{data_dir / s['path']} ({'found' if (data_dir / s['path']).exists() else 'missing'})"
                  for s in specs] or [f"{data_dir} (no local files declared for this split)"]
    hub = task.hub_id + (f" (config {_hub_name(task)!r})" if _hub_name(task) else "")
    try:
        return _load_hub(split, task, ctx)
    except Exception as e:  # offline, unknown dataset, ...: say where we looked and how to fix it
        raise DataError(
            f"task {task.name!r}, split {split!r}: the local files were tried first: "
            f"{'; '.join(looked) if looked else 'none (no data directory: paths.data_dir=hub or none found)'}; "
            f"then the Hub dataset {hub}, which failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Fix the path in task.local.{split} or set "
            f"paths.data_dir=/path/to/data or ${ENV_VAR} to a folder holding the task files."
        ) from None


def _groups(df: pd.DataFrame) -> Optional[pd.Series]:
    """The input each row belongs to (task.group_by: several references per input), or None."""
    return df["group"] if "group" in df.columns else None


def _sample_groups(df: pd.DataFrame, n: int, seed: int) -> pd.Index:
    """The row index of n seeded inputs (all their rows), in file order."""
    keys = pd.Series(_groups(df).unique())
    chosen = set(keys.sample(n=n, random_state=seed))
    return df.index[_groups(df).isin(chosen)]


def _subset(df: pd.DataFrame, n: Optional[int], seed: int, by_group: bool = False) -> pd.DataFrame:
    """n seeded rows; with by_group (an eval split of a task with task.group_by) n inputs with all their rows."""
    if by_group and _groups(df) is not None:
        if n is None or n >= _groups(df).nunique():
            return df
        return df.loc[_sample_groups(df, n, seed)].reset_index(drop=True)
    if n is None or n >= len(df):
        return df
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


CARVED = "carved"  # the eval split of a run with task.tune=true


def carve(train: pd.DataFrame, n: int, seed: int, name: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(n seeded rows of `train`, the rest): the carved split never shares a row with what training draws from.
    With several references per input (a `group` column) n counts inputs, and an input's rows stay together."""
    groups = _groups(train)
    size = len(train) if groups is None else groups.nunique()
    if n >= size:
        raise DataError(f"task {name!r}: task.carve_size={n} leaves no training rows (the train split has "
                        f"{size} {'rows' if groups is None else 'inputs'})")
    held = train.sample(n=n, random_state=seed).index if groups is None else _sample_groups(train, n, seed)
    return train.loc[held].reset_index(drop=True), train.drop(held).reset_index(drop=True)


def _holdout(train: pd.DataFrame, n: int, name: str) -> pd.DataFrame:
    """The rows of a one-file task that become its first eval split: the same for every seed."""
    if n >= len(train):
        raise DataError(f"task {name!r}: holdout_size={n} leaves no training rows (the train split has {len(train)})")
    return train.sample(n=n, random_state=0)


def load_task(task, data_dir: Optional[Path], seed: int, *, need_train: bool = True) -> TaskData:
    """The train split (seeded `train_size` subset) and each eval split (seeded `eval_size` subset).

    `holdout_size` (causal tasks whose data ships as one file, e.g. Alpaca): the first eval split is a seeded
    sample of that many train rows, removed from train. `need_train=False` (evaluation-only runs) skips train.
    """
    ctx: dict = {}
    holdout = task.holdout_size
    evals, source = {}, {}
    train = None
    if task.tune:  # choosing a recipe: evaluate on rows carved out of train only, never on the dev split
        train, src = load_split(task, task.train_split, data_dir, ctx)
        if holdout:  # the holdout is the eval split reports show: the carve never draws from it
            train = train.drop(_holdout(train, holdout, task.name).index).reset_index(drop=True)
            src = f"{src} (less the seeded holdout of {holdout})"
        carved, train = carve(train, task.carve_size, task.carve_seed, task.name)
        evals[CARVED], source[CARVED] = carved, f"{src} (seeded carve of {len(carved)}, seed {task.carve_seed})"
        source[task.train_split] = f"{src} (less the carved {len(carved)})"
        return TaskData(train=_subset(train, task.train_size, seed), evals=evals, source=source,
                        tables=ctx.get("tables"))
    if need_train or holdout:
        train, source[task.train_split] = load_split(task, task.train_split, data_dir, ctx)
    for i, split in enumerate(task.eval_splits):
        if i == 0 and holdout:
            held = _holdout(train, holdout, task.name)
            train = train.drop(held.index).reset_index(drop=True)
            df, src = held.reset_index(drop=True), f"{source[task.train_split]} (seeded holdout of {holdout})"
        else:
            df, src = load_split(task, split, data_dir, ctx)
        per_subject = task.per_subject
        if per_subject and "subject" in df.columns:  # MMLU: a seeded subset of each subject
            df = pd.concat([g.sample(n=min(per_subject, len(g)), random_state=0)
                            for _, g in df.groupby("subject", sort=True)], ignore_index=True)
        evals[split] = _subset(df, task.eval_size, seed, by_group=True)
        source[split] = src
    if train is None:
        train = next(iter(evals.values())).iloc[:0]
    return TaskData(train=_subset(train, task.train_size, seed), evals=evals, source=source,
                    tables=ctx.get("tables"))
