"""Causal-LM tasks: files (or Hub rows) -> examples with a `prompt` and the `answer` the model must produce.

Every format yields a DataFrame with columns `prompt`, `answer` and, where the task has them, `table_id`
(WikiSQL), `subject` (MMLU). The prompt ends where the answer starts: the loss is on answer tokens only, and
evaluation generates (or scores) from the prompt.

Formats (`task.format`):
- `wikisql_text`: JSONL of {"text": "table: <id>\\ncolumns: ...\\nQ: <question>\\nA: SELECT ..."} (mlx-examples)
- `wikisql`: the original release, JSONL of {table_id, question, sql{sel, agg, conds}} plus `<split>.tables.jsonl`
  (header, types, rows), rendered in the same prompt form; the tables also enable execution accuracy
- `alpaca`: a JSON array or JSONL of {instruction, input, output}, with the Alpaca prompt template
- `table`: any TSV/CSV/parquet read as for GLUE, rendered with `task.prompt_template` / `task.answer_template`
- `lines`: a text file, one example per non-empty line split at `task.separator` into the columns `task.fields`,
  rendered as `table` (E2E NLG: `meaning representation||reference`)
- `mmlu_jsonl`: QLoRA's MMLU files, JSONL of {subject, input (prompt ending "Answer:"), output (a letter)}
- `mmlu_csv`: a folder of per-subject CSVs (question, choice0-3, answer index) in the hendrycks prompt form,
  with `task.shots` examples per subject from the dev folder named by the file spec's `shots_from`

With `task.group_by` (several references per input; formats table and lines), the frame also has `group`: that
column's value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from harness.metrics.sql import from_wikisql

CHOICES = ["A", "B", "C", "D"]

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class FormatError(ValueError):
    pass


def _read_jsonl_or_json(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text ({e})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not valid JSON ({e})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise FormatError(f"{path}: expected a JSON array of objects")
        return rows
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise FormatError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _need(row: dict, keys: tuple[str, ...], where: str, text: tuple[str, ...] = ()) -> None:
    """The row is an object holding `keys`; those in `text` hold strings."""
    if not isinstance(row, dict):
        raise FormatError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise FormatError(f"{where}: missing key(s) {missing}; the row has {sorted(row)}")
    bad = [k for k in text if not isinstance(row[k], str)]
    if bad:
        raise FormatError(f"{where}: {', '.join(f'{k!r} is {type(row[k]).__name__}' for k in bad)}, not text")


# ------------------------------------------------------------------------------------------ WikiSQL
def wikisql_prompt(table_id: str, header: list[str], question: str) -> str:
    return f"table: {table_id}\ncolumns: {', '.join(header)}\nQ: {question}\nA:"


def _wikisql_text(rows: list[dict], where: str, task, ctx: dict) -> list[dict]:
    out = []
    for i, r in enumerate(rows, 1):
        _need(r, ("text",), f"{where}:{i}", text=("text",))
        text = r["text"]
        cut = text.rfind("\nA:")
        if cut < 0:
            raise FormatError(f"{where}:{i}: no '\\nA:' separating the prompt from the SQL answer")
        first = text.split("\n", 1)[0]
        table_id = first[len("table:"):].strip() if first.startswith("table:") else None
        out.append({"prompt": text[:cut + 3], "answer": text[cut + 3:], "table_id": table_id})
    return out


def read_tables(path: Path) -> dict[str, dict]:
    tables = {}
    for r in _read_jsonl_or_json(path):
        _need(r, ("id", "header"), str(path))
        tables[r["id"]] = {"header": list(r["header"]), "types": r.get("types"), "rows": r.get("rows", [])}
    return tables


def _tables_path(path: Path, spec: dict, task, data_dir: Optional[Path]) -> Optional[Path]:
    named = spec.get("tables") or task.tables
    if named:
        p = Path(named)
        return p if p.is_absolute() or data_dir is None else data_dir / p
    guess = path.with_name(path.name.replace(".jsonl", ".tables.jsonl"))
    return guess if guess != path else None


def _wikisql(rows: list[dict], where: str, task, ctx: dict) -> list[dict]:
    tables = ctx.get("tables") or {}
    out = []
    for i, r in enumerate(rows, 1):
        _need(r, ("question", "sql"), f"{where}:{i}", text=("question",))
        table = r.get("table")  # Hub rows carry the table inline
        tid = r.get("table_id") or (table or {}).get("id")
        if table is None:
            table = tables.get(tid)
            if table is None:
                raise FormatError(
                    f"{where}:{i}: table {tid!r} is not in the tables file ({ctx.get('tables_path')}); the original "
                    "WikiSQL format needs <split>.tables.jsonl for column names (set task.tables=...)"
                )
        else:
            tables.setdefault(tid, {"header": list(table["header"]), "types": table.get("types"),
                                    "rows": table.get("rows", [])})
        sql = dict(r["sql"])
        conds = sql.get("conds")
        if isinstance(conds, dict):  # Hub layout: {column_index: [...], operator_index: [...], condition: [...]}
            sql["conds"] = list(zip(conds["column_index"], conds["operator_index"], conds["condition"]))
        header = list(table["header"])
        out.append({"prompt": wikisql_prompt(tid, header, r["question"]),
                    "answer": " " + from_wikisql(sql, header, tid), "table_id": tid})
    ctx["tables"] = tables
    return out


# ------------------------------------------------------------------------------------------ instructions
def alpaca_prompt(instruction: str, input_: str = "") -> str:
    if input_ and input_.strip():
        return ALPACA_PROMPT.format(instruction=instruction, input=input_)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def _alpaca(rows: list[dict], where: str, task, ctx: dict) -> list[dict]:
    out = []
    for i, r in enumerate(rows, 1):
        _need(r, ("instruction", "output"), f"{where}:{i}", text=("instruction", "output"))
        if r.get("input") is not None and not isinstance(r["input"], str):
            raise FormatError(f"{where}:{i}: 'input' is {type(r['input']).__name__}, not text")
        out.append({"prompt": alpaca_prompt(r["instruction"], r.get("input") or ""), "answer": r["output"]})
    return out


def _table(rows: list[dict], where: str, task, ctx: dict) -> list[dict]:
    if not task.prompt_template or not task.answer_template:
        raise FormatError(f"task {task.name!r}: format 'table' needs task.prompt_template and task.answer_template")
    labels = list(task.labels)
    out = []
    for i, r in enumerate(rows, 1):
        row = dict(r)
        if labels and "label" in row:  # class ids -> label words
            v = str(row["label"]).strip()
            if v not in labels:
                try:
                    v = labels[int(float(v))]
                except (ValueError, IndexError):
                    raise FormatError(f"{where}:{i}: label {row['label']!r} is not one of {labels}") from None
            row["label"] = v
        try:
            ex = {"prompt": task.prompt_template.format(**row), "answer": task.answer_template.format(**row)}
        except KeyError as e:
            raise FormatError(f"{where}:{i}: the prompt/answer template names column {e} the row lacks "
                              f"(it has {sorted(row)})") from None
        if task.group_by:
            if task.group_by not in row:
                raise FormatError(f"{where}:{i}: task.group_by={task.group_by!r} is not a column of the row "
                                  f"(it has {sorted(row)})")
            ex["group"] = str(row[task.group_by])
        out.append(ex)
    return out


def read_lines(path: Path, task) -> list[dict]:
    """One row per non-empty line: the line split at task.separator into task.fields (exactly that many parts)."""
    from harness.config import unescape

    sep, fields = unescape(task.separator), list(task.fields)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text ({e})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != len(fields):
            raise FormatError(f"{path}:{i}: {len(parts)} part(s) split at {sep!r}, but task.fields names "
                              f"{len(fields)} ({fields})")
        rows.append({f: p.strip() for f, p in zip(fields, parts)})
    return rows


# ------------------------------------------------------------------------------------------ MMLU
def mmlu_header(subject: str) -> str:
    # the hendrycks/QLoRA form, double space included ("about" + " abstract algebra")
    return f"The following are multiple choice questions (with answers) about {' ' + ' '.join(subject.split('_'))}.\n\n"


def mmlu_question(q: dict, with_answer: bool) -> str:
    text = q["question"] + "".join(f"\n{c}. {q[f'choice{i}']}" for i, c in enumerate(CHOICES)) + "\nAnswer:"
    return text + (f" {CHOICES[int(q['answer'])]}\n\n" if with_answer else "")


def _mmlu_jsonl(rows: list[dict], where: str, task, ctx: dict) -> list[dict]:
    out = []
    for i, r in enumerate(rows, 1):
        _need(r, ("subject", "input", "output"), f"{where}:{i}", text=("subject", "input", "output"))
        if r["output"].strip() not in CHOICES:
            raise FormatError(f"{where}:{i}: answer {r['output']!r} is not one of {CHOICES}")
        out.append({"prompt": r["input"], "answer": " " + r["output"].strip(), "subject": r["subject"]})
    return out


def _mmlu_rows(rows: list[dict], where: str, task, ctx: dict) -> list[dict]:
    """Rows with subject, question, choice0-3, answer (index) -> hendrycks prompts with `task.shots` dev shots."""
    shots = ctx.get("shots", {})
    out = []
    for i, r in enumerate(rows, 1):
        _need(r, ("subject", "question", "choice0", "choice1", "choice2", "choice3", "answer"), f"{where}:{i}")
        k = int(task.shots or 0)
        examples = shots.get(r["subject"], [])[:k]
        if len(examples) < k:
            raise FormatError(f"{where}: {k}-shot needs {k} dev examples of {r['subject']!r}, found {len(examples)}")
        prompt = mmlu_header(r["subject"]) + "".join(mmlu_question(s, True) for s in examples) + mmlu_question(r, False)
        out.append({"prompt": prompt, "answer": " " + CHOICES[int(r["answer"])], "subject": r["subject"]})
    return out


def _read_mmlu_folder(folder: Path) -> list[dict]:
    if not folder.is_dir():
        raise FormatError(f"{folder}: not a folder of per-subject MMLU CSVs")
    rows = []
    for f in sorted(folder.glob("*.csv")):
        subject = f.stem.rsplit("_", 1)[0]  # abstract_algebra_test.csv -> abstract_algebra
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
        if list(df.columns)[:6] != ["question", "choice0", "choice1", "choice2", "choice3", "answer"]:
            raise FormatError(f"{f}: expected the header question,choice0..choice3,answer; got {list(df.columns)}")
        rows += [{**r, "subject": subject} for r in df.to_dict("records")]
    if not rows:
        raise FormatError(f"{folder}: no *.csv files")
    return rows


# ------------------------------------------------------------------------------------------ registry
Converter = Callable[[list, str, Any, dict], list]
FORMATS: dict[str, Converter] = {
    "wikisql_text": _wikisql_text,
    "wikisql": _wikisql,
    "alpaca": _alpaca,
    "table": _table,
    "lines": _table,
    "mmlu_jsonl": _mmlu_jsonl,
    "mmlu_csv": _mmlu_rows,
}


def read_file(path: Path, spec: dict, task, data_dir: Optional[Path], ctx: dict) -> list[dict]:
    """One local file (or folder, for mmlu_csv) -> raw rows for the task's converter; fills ctx (tables, shots).
    A file spec's `reader` overrides task.format for that file (MMLU: the JSONL validation, the CSV test folder)."""
    fmt = reader_of(spec, task)
    if fmt == "table":
        from harness.tasks.data import _read_table

        df, _ = _read_table(path, spec)
        df = df.rename(columns=dict(spec.get("rename", {}) or {}))
        return df.to_dict("records")
    if fmt == "lines":
        return read_lines(path, task)
    if fmt == "mmlu_csv":
        if spec.get("shots_from") and int(task.shots or 0) > 0:
            shots: dict[str, list] = {}
            for r in _read_mmlu_folder(data_dir / spec["shots_from"] if data_dir else Path(spec["shots_from"])):
                shots.setdefault(r["subject"], []).append(r)
            ctx["shots"] = shots
        return _read_mmlu_folder(path)
    if fmt == "wikisql":
        tpath = _tables_path(path, spec, task, data_dir)
        ctx["tables_path"] = tpath
        if tpath is None or not tpath.is_file():
            raise FormatError(
                f"{path}: the original WikiSQL format needs the tables file for column names; {tpath} not found "
                "(set task.tables=<path to *.tables.jsonl>, or use the prompt-formatted subset, task=wikisql)"
            )
        ctx["tables"] = read_tables(tpath)
    elif fmt == "wikisql_text" and (spec.get("tables") or task.tables):
        tpath = _tables_path(path, spec, task, data_dir)
        if tpath is not None and tpath.is_file():
            ctx["tables"] = read_tables(tpath)
    return _read_jsonl_or_json(path)


def reader_of(spec: Optional[dict], task) -> str:
    fmt = (spec or {}).get("reader") or task.format
    if fmt not in FORMATS:
        raise FormatError(f"task {task.name!r}: format {fmt!r} is not valid; valid: {sorted(FORMATS)}")
    return fmt


def convert(rows: list[dict], where: str, task, ctx: dict, spec: Optional[dict] = None) -> pd.DataFrame:
    fmt = reader_of(spec, task)
    try:
        examples = FORMATS[fmt](rows, where, task, ctx)
    except FormatError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:  # a field of an unexpected shape
        raise FormatError(f"{where}: a row does not fit format {fmt!r} ({type(e).__name__}: {e})") from None
    if not examples:
        raise FormatError(f"{where}: no examples")
    return pd.DataFrame(examples)
