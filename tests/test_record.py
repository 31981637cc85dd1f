"""The record's declared shape (harness/record.py): every record reads and writes back unchanged, a key outside the
declaration is caught where it is written, and the reader takes records of every schema version so far."""

from __future__ import annotations

import pytest

from harness.record import SCHEMA_VERSION, RecordShapeError, RunRecord, check_shape
from tests.records_fixture import make_record


def test_records_read_and_write_back_unchanged():
    for rec in (make_record(), make_record(status="failed", error="RuntimeError: x"),
                make_record(method="full", extra={"throughput": None, "memory": {"peak_mb": None},
                                                  "generation": {"validation": {"new_tokens": 10, "seconds": 2.0}}})):
        r = RunRecord.read(rec)
        assert r.as_dict() == rec
        assert check_shape(rec) == rec


def test_sections_are_typed_and_absent_ones_are_none():
    rec = make_record(value=0.75)
    r = RunRecord.read(rec)
    assert r.metrics.value("final") == 0.75 and r.memory.peak_mb == 500.0 and r.params.trainable > 0
    assert r.provenance.host["cpu"] == "Test CPU" and r.method.compute_dtype == "bfloat16"
    old = {k: v for k, v in rec.items() if k not in ("memory", "throughput", "adapter", "schema_version")}
    r = RunRecord.read(old)  # an early record: no schema_version, sections missing
    assert r.memory is None and r.throughput is None and r.schema_version == SCHEMA_VERSION
    assert r.as_dict() == {**old, "schema_version": SCHEMA_VERSION}


def test_an_undeclared_key_fails_the_writer_and_is_kept_by_the_reader():
    rec = {**make_record(), "memroy": {"peak_mb": 1.0}}
    with pytest.raises(RecordShapeError, match=r"undeclared keys \['memroy'\].*harness/record.py"):
        check_shape(rec)
    r = RunRecord.read(rec)  # reading stays lenient: a newer writer's key is kept, not lost
    assert r.extra == {"memroy": {"peak_mb": 1.0}} and r.as_dict() == rec
    sec = RunRecord.read({**make_record(), "memory": {"peak_mb": 2.0, "train_peak_allocated_mb": 9.0}}).memory
    assert sec.peak_mb == 2.0 and sec.extra == {"train_peak_allocated_mb": 9.0}  # a section keeps what it lacks
    with pytest.raises(RecordShapeError, match="newer than this reader"):
        RunRecord.read({**make_record(), "schema_version": SCHEMA_VERSION + 1})


def test_the_store_annotations_are_read_but_never_written():
    rec = {**make_record(), "_path": "runs/x/record.json", "_dir": "/abs/runs/x"}
    r = RunRecord.read(rec)
    assert (r.store_path, r.store_dir) == ("runs/x/record.json", "/abs/runs/x")
    assert "_path" not in r.as_dict() and "_dir" not in r.as_dict()


def test_the_writer_builds_sections_from_declared_fields_only():
    from harness.record import MethodInfo, TaskInfo

    with pytest.raises(TypeError, match="nam"):
        MethodInfo.of(nam="lora")  # a misspelt field fails where the record is built
    task = TaskInfo.of(name="e2e", pair_encoding=None, extra={"prompt_format": "lines"}).as_dict()
    assert task == {"name": "e2e", "pair_encoding": None, "prompt_format": "lines"}  # None given = null written
