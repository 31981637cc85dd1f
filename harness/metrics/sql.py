"""WikiSQL scoring: logical-form accuracy and execution accuracy for queries in the text form the prompts use,

    SELECT [AGG] <column> FROM <table> [WHERE <column> <op> '<value>' [AND ...]]

(the form of the mlx-examples WikiSQL subset; `from_wikisql` writes the original release's {sel, agg, conds}
dicts the same way). Column names are free text (spaces, slashes, dots), so parsing splits on the keywords.

- Logical form (the LoRA paper's WikiSQL metric): two queries match when they have the same aggregation, the
  same selected column and the same set of conditions, after normalising whitespace, the case of keywords, the
  quote characters and the case of condition values. This is the comparison WikiSQL's own evaluation makes
  (lib/query.py: values compared lower-cased, conditions unordered); a query that does not parse matches only
  if its normalised text equals the gold text.
- Execution: both queries run in SQLite on the question's table (from a *.tables.jsonl); a query that does not
  parse, names a column the table lacks, or fails in SQLite is wrong, never an error.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Optional

AGGS = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"]  # WikiSQL's agg_ops, index = agg id
COND_OPS = ["=", ">", "<", "OP"]  # WikiSQL's cond_ops ("OP" is never used in the data)
KEYWORDS = ("SELECT", "FROM", "WHERE", "AND") + tuple(a for a in AGGS if a)


@dataclass(frozen=True)
class Query:
    agg: str  # "" or one of AGGS
    sel: str  # selected column, as written
    table: str
    conds: tuple[tuple[str, str, str], ...]  # (column, op, value without quotes)

    def logical_form(self) -> tuple:
        return (self.agg, _norm_ident(self.sel), frozenset((_norm_ident(c), op, _norm_value(v)) for c, op, v in self.conds))


def _norm_ident(s: str) -> str:
    return " ".join(s.split()).lower()


def _norm_value(s: str) -> str:
    s = " ".join(str(s).split()).lower()
    try:  # 3 and 3.0 are the same number
        f = float(s)
        return repr(f) if not f.is_integer() else str(int(f))
    except ValueError:
        return s


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on `sep` (a case-insensitive keyword with spaces around it) where it is not inside quotes."""
    parts, buf, quote, i = [], [], None, 0
    n, m = len(text), len(sep)
    while i < n:
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif text[i:i + m].upper() == sep:
            parts.append("".join(buf))
            buf, i = [], i + m
            continue
        buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def normalize(sql: str) -> str:
    """Whitespace collapsed, keywords upper case, double quotes -> single quotes (values keep their case)."""
    out = []
    for tok in re.split(r"(\s+|'[^']*'|\"[^\"]*\")", sql.strip()):
        if not tok or tok.isspace():
            continue
        if tok[0] in "'\"" and len(tok) >= 2 and tok[-1] == tok[0]:
            out.append("'" + tok[1:-1] + "'")
        else:
            out.append(tok.upper() if tok.upper() in KEYWORDS else tok)
    return " ".join(out)


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


def parse(sql: str) -> Optional[Query]:
    """Text -> Query, or None when the text is not a query of the WikiSQL form."""
    s = " ".join(sql.strip().split())
    if not s.upper().startswith("SELECT "):
        return None
    s = s[len("SELECT "):]
    head = _split_outside_quotes(s, " FROM ")
    if len(head) != 2:
        return None
    sel, rest = head[0].strip(), head[1]
    agg = ""
    first = sel.split(" ", 1)
    if first[0].upper() in AGGS[1:] and len(first) == 2:
        agg, sel = first[0].upper(), first[1].strip()
    elif len(first) == 2 and re.fullmatch(r"(MAX|MIN|COUNT|SUM|AVG)\((.+)\)", sel, re.I):  # COUNT(col)
        m = re.fullmatch(r"(MAX|MIN|COUNT|SUM|AVG)\((.+)\)", sel, re.I)
        agg, sel = m.group(1).upper(), m.group(2).strip()
    if not sel:
        return None
    where = _split_outside_quotes(rest, " WHERE ")
    if len(where) > 2:
        return None
    table = where[0].strip()
    if not table:
        return None
    conds = []
    if len(where) == 2:
        for part in _split_outside_quotes(where[1], " AND "):
            cond = _parse_cond(part.strip())
            if cond is None:
                return None
            conds.append(cond)
    return Query(agg=agg, sel=sel, table=table, conds=tuple(conds))


def _parse_cond(text: str) -> Optional[tuple[str, str, str]]:
    best = None
    for op in ("=", ">", "<"):
        # the operator with spaces around it, outside quotes; the first one in the text wins
        parts = _split_outside_quotes(text, f" {op} ")
        if len(parts) >= 2:
            pos = len(parts[0])
            if best is None or pos < best[0]:
                best = (pos, op, parts[0], f" {op} ".join(parts[1:]))
    if best is None:
        return None
    _, op, col, val = best
    col, val = col.strip(), _unquote(val)
    if not col or val == "":
        return None
    return col, op, val


def logical_form_match(pred: str, gold: str) -> bool:
    p, g = parse(pred), parse(gold)
    if p is not None and g is not None:
        return p.logical_form() == g.logical_form()
    return normalize(pred).lower() == normalize(gold).lower()


def exact_match(pred: str, gold: str) -> bool:
    """Text equality after collapsing whitespace only (stricter than the logical form)."""
    return " ".join(pred.split()) == " ".join(gold.split())


def from_wikisql(sql: dict, header: list[str], table_id: str) -> str:
    """An original WikiSQL {sel, agg, conds} dict -> the text form above."""
    sel = header[sql["sel"]]
    agg = AGGS[sql["agg"]]
    text = f"SELECT {agg + ' ' if agg else ''}{sel} FROM {table_id}"
    conds = [f"{header[c]} {COND_OPS[op]} '{v}'" for c, op, v in sql.get("conds", [])]
    if conds:
        text += " WHERE " + " AND ".join(conds)
    return text


# ------------------------------------------------------------------------------------------ execution
class TableDB:
    """WikiSQL tables in an in-memory SQLite database, one SQL table per WikiSQL table (columns c0, c1, ...)."""

    def __init__(self, tables: dict[str, dict]):
        self.tables = tables  # table id -> {"header": [...], "types": [...], "rows": [[...]]}
        self.conn = sqlite3.connect(":memory:")
        self._made: dict[str, str] = {}

    def _sql_name(self, table_id: str) -> str:
        if table_id not in self._made:
            t = self.tables[table_id]
            name = f"t{len(self._made)}"
            types = t.get("types") or ["text"] * len(t["header"])
            cols = ", ".join(f"c{i} {'REAL' if ty == 'real' else 'TEXT'}" for i, ty in enumerate(types))
            self.conn.execute(f"CREATE TABLE {name} ({cols})")
            marks = ", ".join("?" for _ in t["header"])
            self.conn.executemany(f"INSERT INTO {name} VALUES ({marks})", [list(r) for r in t.get("rows", [])])
            self._made[table_id] = name
        return self._made[table_id]

    def execute(self, sql: str, table_id: str) -> Optional[list]:
        """The query's result rows (sorted, so row order does not matter), or None when it cannot run."""
        q = parse(sql)
        t = self.tables.get(table_id)
        if q is None or t is None:
            return None
        cols = {_norm_ident(h): i for i, h in enumerate(t["header"])}
        types = t.get("types") or ["text"] * len(t["header"])
        sel = cols.get(_norm_ident(q.sel))
        if sel is None:
            return None
        expr = f"{q.agg}(c{sel})" if q.agg else f"c{sel}"
        where, params = [], []
        for col, op, val in q.conds:
            i = cols.get(_norm_ident(col))
            if i is None:
                return None
            if types[i] == "real":  # as WikiSQL's dbengine: numbers compare as numbers
                try:
                    params.append(float(val))
                except ValueError:
                    return None
                where.append(f"c{i} {op} ?")
            else:
                params.append(str(val).lower())
                where.append(f"lower(c{i}) {op} ?")
        sql_text = f"SELECT {expr} FROM {self._sql_name(table_id)}" + (" WHERE " + " AND ".join(where) if where else "")
        try:
            rows = self.conn.execute(sql_text, params).fetchall()
        except sqlite3.Error:
            return None
        return sorted((tuple(_cell(x) for x in r) for r in rows), key=repr)

    def execution_match(self, pred: str, gold: str, table_id: str) -> bool:
        g = self.execute(gold, table_id)
        if g is None:
            return False
        p = self.execute(pred, table_id)
        return p is not None and p == g


def _cell(x):
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str):
        return x.lower()
    return x
