"""The results store: JSON records are the truth, the SQLite index follows them; concurrent writers lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.records import write_json_atomic
from harness.store import Store
from tests.conftest import REPO
from tests.records_fixture import make_record


def put(root, name, rec):
    return write_json_atomic(root / "sweeps" / "x" / name / "record.json", rec)


def test_sync_tracks_new_rewritten_deleted_and_corrupt_files(tmp_path):
    store = Store(tmp_path)
    a = put(tmp_path, "a", make_record(seed=1))
    b = put(tmp_path, "b", make_record(seed=2, status="failed"))
    rep = store.sync()
    assert (rep.added, rep.updated, rep.removed, rep.corrupt) == (2, 0, 0, [])
    assert store.done(json.loads(a.read_text())["config_hash"]) == "sweeps/x/a/record.json"
    assert store.done(json.loads(b.read_text())["config_hash"]) is None  # failed is not done

    # a retry rewrites b as ok; a is deleted; c is truncated mid-write by something else
    import os
    import time

    time.sleep(0.01)
    write_json_atomic(b, make_record(seed=2))
    os.utime(b, ns=(time.time_ns(), time.time_ns() + 10**9))
    a.unlink()
    c = tmp_path / "sweeps" / "x" / "c" / "record.json"
    c.parent.mkdir(parents=True)
    c.write_text('{"status": "ok", "config_h')
    rep = store.sync()
    assert (rep.added, rep.updated, rep.removed) == (0, 1, 1)
    assert [p for p, _ in rep.corrupt] == [str(c)]
    assert [r["status"] for r in store.records()] == ["ok"]
    assert store.sync().unchanged == 1


def test_frame_flattens_records(tmp_path):
    store = Store(tmp_path)
    for s in (1, 2, 3):
        put(tmp_path, f"r{s}", make_record(seed=s, value=0.1 * s))
    store.sync()
    df = store.frame()
    assert len(df) == 3 and set(df["config.train.seed"]) == {1, 2, 3}
    assert sorted(df["metrics.final.validation.pearson"]) == [0.1, 0.2, 0.30000000000000004]


WRITER = r"""
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from harness.records import write_json_atomic
from harness.store import Store
from tests.records_fixture import make_record
root, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = Store(root, timeout=60)
for i in range(n):
    rec = make_record(experiment="concurrent", seed=i, r=1 if tag == "a" else 2)
    p = write_json_atomic(root / "sweeps" / tag / str(i) / "record.json", rec)
    store.add(p, rec)
"""


def test_two_processes_writing_at_once_lose_no_record(tmp_path):
    n = 150
    code = WRITER.format(repo=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), tag, str(n)], stderr=subprocess.PIPE,
                              text=True) for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = Store(tmp_path)
    recs = store.records("concurrent")
    assert len(recs) == 2 * n
    assert len({r["config_hash"] for r in recs}) == 2 * n
    assert store.sync().added == 0  # the index already had every file


def test_a_record_under_an_older_hash_rule_is_found_done_under_the_current_one(tmp_path):
    """The index keys records by the hash of their config under the current rules (records.identity): a record
    written before a key joined the exclusions (its stored config_hash differs) still makes the same run `done`,
    and an index built under older rules is re-derived when it is opened."""
    import sqlite3

    from harness.records import config_hash

    rec = make_record(seed=1)
    now = config_hash(rec["config"])
    rec["config_hash"] = "written_by_older"
    put(tmp_path, "a", rec)
    store = Store(tmp_path)
    store.sync()
    assert store.done(now) == "sweeps/x/a/record.json" and store.done("written_by_older") is None

    with sqlite3.connect(tmp_path / "results.sqlite") as con:  # as an index made under other rules would hold it
        con.execute("UPDATE records SET config_hash = 'stale'")
        con.execute("UPDATE meta SET value = 'older' WHERE key = 'hash_version'")
    assert Store(tmp_path).done(now) == "sweeps/x/a/record.json"


def test_a_learning_rate_the_method_does_not_train_with_is_outside_the_hash():
    """A recipe's lr_bitfit (for BitFit) or lr_head (for the head-only baseline) changes nothing a LoRA run
    computes, so not its hash either; it does change the hash of the method that trains with it."""
    from harness.records import config_hash

    def cfg(method, **train):
        c = make_record(method=method)["config"]
        c["train"].update(train)
        return c

    lora = cfg("lora")
    assert config_hash(cfg("lora", lr_bitfit=3e-3, lr_head=3e-2, lr_full=3e-5)) == config_hash(lora)
    bitfit = cfg("lora")
    bitfit["method"]["bias_only"] = True
    bitfit_lr = cfg("lora", lr_bitfit=3e-3)
    bitfit_lr["method"]["bias_only"] = True
    assert config_hash(bitfit_lr) != config_hash(bitfit)
    assert config_hash(cfg("full", lr_full=3e-5)) != config_hash(cfg("full"))
    assert config_hash(cfg("lora", lr=2e-3)) != config_hash(lora)  # the lr every method reads stays in
