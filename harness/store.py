"""The results store: every run's record.json under the output root, indexed in one SQLite table.

The JSON records are the source of truth (each written atomically by the run that owns it); the index
(`<output_root>/results.sqlite`) is a cache that `sync()` rebuilds from them at any time, so a lost or stale
index never loses a result. Any number of processes may add records at once: each write is one SQLite
transaction, and SQLite serialises writers (a writer waits up to `timeout` seconds for the lock).

    python -m harness.store                 # sync, then list every run (experiment, status, metric)
    python -m harness.store --failed        # only failed / diverged runs, with their errors
    python -m harness.store --root outputs --experiment lora_table6
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from harness.records import HASH_VERSION, RECORD_NAME, identity

if TYPE_CHECKING:
    from harness.config import Config

log = logging.getLogger("harness.store")

INDEX_NAME = "results.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    path        TEXT PRIMARY KEY,   -- record.json, relative to the store root
    mtime_ns    INTEGER NOT NULL,   -- of the file when indexed (a rewrite re-indexes it)
    config_hash TEXT,
    experiment  TEXT,
    status      TEXT,
    run_id      TEXT,
    finished_at TEXT,
    record      TEXT NOT NULL       -- the whole record, as JSON
);
CREATE INDEX IF NOT EXISTS records_hash ON records (config_hash, status);
CREATE INDEX IF NOT EXISTS records_experiment ON records (experiment);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
DONE = "ok"


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (path, error): reported, skipped

    def __str__(self) -> str:
        s = f"{self.added} added, {self.updated} updated, {self.removed} removed, {self.unchanged} unchanged"
        return s + (f", {len(self.corrupt)} unreadable" if self.corrupt else "")


class Store:
    def __init__(self, root: str | os.PathLike, timeout: float = 120.0):
        self.root = Path(root)
        self.timeout = timeout
        self.index_path = self.root / INDEX_NAME

    # ------------------------------------------------------------------------------------------ plumbing
    def _connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.index_path, timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        con.executescript(SCHEMA)
        self._rehash(con)
        return con

    @staticmethod
    def _rehash(con: sqlite3.Connection) -> None:
        """The config_hash column holds records.identity (the hash under the current rules), so a run that computes
        what a record written under older rules computed finds it done. When the rules change (HASH_VERSION), every
        row's hash is derived again from its record."""
        row = con.execute("SELECT value FROM meta WHERE key = 'hash_version'").fetchone()
        if row is not None and row[0] == HASH_VERSION:
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            for path, text in con.execute("SELECT path, record FROM records").fetchall():
                con.execute("UPDATE records SET config_hash = ? WHERE path = ?", (identity(json.loads(text)), path))
            con.execute("INSERT INTO meta (key, value) VALUES ('hash_version', ?) ON CONFLICT(key) DO UPDATE SET "
                        "value = excluded.value", (HASH_VERSION,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @contextmanager
    def _db(self):
        """One connection per operation (each statement its own transaction, autocommit), always closed."""
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    def _key(self, path: Path) -> str:
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    @staticmethod
    def _row(key: str, mtime_ns: int, rec: dict) -> tuple:
        return (key, mtime_ns, identity(rec), rec.get("experiment"), rec.get("status"), rec.get("run_id"),
                rec.get("finished_at"), json.dumps(rec, default=str))

    _UPSERT = ("INSERT INTO records (path, mtime_ns, config_hash, experiment, status, run_id, finished_at, record) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET mtime_ns=excluded.mtime_ns, "
               "config_hash=excluded.config_hash, experiment=excluded.experiment, status=excluded.status, "
               "run_id=excluded.run_id, finished_at=excluded.finished_at, record=excluded.record")

    # ------------------------------------------------------------------------------------------ writing
    def add(self, path: str | os.PathLike, rec: dict | None = None) -> None:
        """Index one record file (already written atomically by its run)."""
        path = Path(path)
        if rec is None:
            rec = json.loads(path.read_text())
        with self._db() as con:
            con.execute(self._UPSERT, self._row(self._key(path), path.stat().st_mtime_ns, rec))

    def record_files(self) -> Iterable[Path]:
        return sorted(self.root.rglob(RECORD_NAME))

    def sync(self) -> SyncReport:
        """Bring the index in line with the record files on disk (new, rewritten, deleted, unreadable)."""
        rep = SyncReport()
        with self._db() as con:
            known = dict(con.execute("SELECT path, mtime_ns FROM records").fetchall())
            seen = set()
            for f in self.record_files():
                key = self._key(f)
                seen.add(key)
                try:
                    mtime = f.stat().st_mtime_ns
                except OSError:
                    continue  # removed while we scan
                if known.get(key) == mtime:
                    rep.unchanged += 1
                    continue
                try:
                    rec = json.loads(f.read_text())
                    if not isinstance(rec, dict) or "config_hash" not in rec or "status" not in rec:
                        raise ValueError("not a result record (no config_hash/status)")
                except (OSError, ValueError) as e:
                    rep.corrupt.append((str(f), f"{type(e).__name__}: {e}"))
                    log.warning("skipping unreadable record %s: %s", f, e)
                    if key in known:
                        con.execute("DELETE FROM records WHERE path = ?", (key,))
                    continue
                con.execute(self._UPSERT, self._row(key, mtime, rec))
                if key in known:
                    rep.updated += 1
                else:
                    rep.added += 1
            for key in set(known) - seen:
                con.execute("DELETE FROM records WHERE path = ?", (key,))
                rep.removed += 1
        return rep

    # ------------------------------------------------------------------------------------------ reading
    def done(self, config_hash: str) -> str | None:
        """Path of an `ok` record with this config hash, or None."""
        with self._db() as con:
            row = con.execute("SELECT path FROM records WHERE config_hash = ? AND status = ? LIMIT 1",
                              (config_hash, DONE)).fetchone()
        return row[0] if row else None

    def done_for(self, cfg: Config) -> str | None:
        """Path of an `ok` record of the run `cfg` (a composed config) describes, the index synced first: the one
        rule for "already done" that sweeps (any launcher), the search and `harness.run` resume by."""
        from harness.config import resolved
        from harness.records import config_hash

        self.sync()
        return self.done(config_hash(resolved(cfg)))

    def done_hashes(self) -> dict[str, str]:
        with self._db() as con:
            rows = con.execute("SELECT config_hash, path FROM records WHERE status = ?", (DONE,)).fetchall()
        return dict(rows)

    def records(self, experiment: str | None = None, status: str | None = None) -> list[dict]:
        """Records (dicts) in the index, oldest first, each with `_path` (relative to the root) and `_dir` (the
        run directory, absolute: its per-example predictions are there) added."""
        q, args = "SELECT path, record FROM records WHERE 1=1", []
        if experiment is not None:
            q, args = q + " AND experiment = ?", args + [experiment]
        if status is not None:
            q, args = q + " AND status = ?", args + [status]
        with self._db() as con:
            rows = con.execute(q + " ORDER BY finished_at, path", args).fetchall()
        out = []
        for path, blob in rows:
            rec = json.loads(blob)
            rec["_path"] = path
            rec["_dir"] = str((self.root / path).parent.resolve())
            out.append(rec)
        return out

    def experiments(self) -> list[str]:
        with self._db() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT experiment FROM records ORDER BY experiment")]

    def frame(self, experiment: str | None = None, status: str | None = None):
        """All records as one pandas DataFrame (nested keys flattened with dots, e.g. `config.lora.r`)."""
        import pandas as pd

        recs = self.records(experiment, status)
        for r in recs:  # long per-step histories stay in the JSON, not in the table
            r.get("metrics", {}).pop("history", None)
            r.pop("traceback", None)
        return pd.json_normalize(recs) if recs else pd.DataFrame()


def headline(rec: dict) -> tuple[str | None, float | None]:
    """(metric name, final value on the headline split) of a record, or (None, None)."""
    from harness.record import Metrics

    m = Metrics.read(rec.get("metrics"))
    if m is None:
        return None, None
    return (m.headline or {}).get("metric"), m.value("final")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.store", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.environ.get("HARNESS_OUTPUT_ROOT", "outputs"), help="output root (default: outputs)")
    ap.add_argument("--experiment", help="only this experiment")
    ap.add_argument("--failed", action="store_true", help="only failed or diverged runs, with their errors")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store = Store(args.root)
    rep = store.sync()
    print(f"{store.index_path}: {rep}")
    for path, err in rep.corrupt:
        print(f"  unreadable: {path}: {err}")
    for rec in store.records(args.experiment):
        if args.failed and rec.get("status") in ("ok",):
            continue
        metric, value = headline(rec)
        val = f"{metric}={value:.4f}" if value is not None else rec.get("error", "")
        print(f"{rec.get('experiment', '?'):<16} {rec.get('status', '?'):<9} {rec.get('config_hash', '?')}  "
              f"{rec['_path']}  {val}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
