"""The typed records: one codec per field, both ways; unknown fields survive."""

from __future__ import annotations

from dataclasses import fields

import pytest

from jobs.domain.records import (
    Batch,
    BatchUpdate,
    Event,
    EventState,
    EventUpdate,
    Job,
    JobUpdate,
    batch_fields,
    event_fields,
    job_fields,
)
from jobs.domain.statuses import JobStatus

STORED_JOB = {
    "id": "job_1",
    "tenant": "default",
    "seq": "7",
    "status": "running",
    "created_at": "1700000000.125",
    "updated_at": "1700000001.500",
    "deadline": "1700003600.125",
    "request": '{"model": "m", "input": "hi"}',
    "model": "m",
    "metadata": '{"k": [1, 2]}',
    "custom_id": "",
    "webhook_url": "",
    "webhook_secret": "",
    "interaction_id": "i2",
    "interaction_ids": '["i1", "i2"]',
    "create_inflight": "0",
    "possible_duplicate": "1",
    "poll_count": "3",
    "cancel_requested": "1",
    "pending_calls": "",
    "usage": '{"total_tokens": 5}',
    "output_text": "",
    "files": '{"a.png": "image/png"}',
    "from_a_newer_version": "x",
}


def test_job_fields_have_real_types() -> None:
    job = Job.from_redis({k.encode(): v.encode() for k, v in STORED_JOB.items()})
    assert job.status is JobStatus.running
    assert job.seq == 7 and job.poll_count == 3 and job.submit_attempts == 0
    assert job.created_at == 1700000000.125 and job.submitted_at is None
    assert job.possible_duplicate is True and job.create_inflight is False
    assert job.cancel_requested is True and job.cancel_sent is False
    assert job.interaction_ids == ["i1", "i2"]
    assert job.metadata == {"k": [1, 2]} and job.usage == {"total_tokens": 5}
    assert job.error is None and job.pending_calls is None
    assert job.output_text == ""  # stored empty, not absent
    assert job.files == {"a.png": "image/png"}
    assert job.body() == {"model": "m", "input": "hi"}
    assert job.extra == {"from_a_newer_version": "x"}


def test_job_round_trip_keeps_unknown_fields() -> None:
    job = Job.from_redis(STORED_JOB)
    again = Job.from_redis(job.to_redis())
    assert again == job
    stored = job.to_redis()
    assert stored["from_a_newer_version"] == "x"
    for name in ("status", "created_at", "interaction_ids", "metadata", "usage", "files"):
        assert stored[name] == STORED_JOB[name]
    assert stored["possible_duplicate"] == "1" and stored["cancel_requested"] == "1"


def test_a_new_job_is_stored_as_before() -> None:
    """A new record has exactly the fields the API always wrote (an empty
    custom_id included), and nothing for what is not set yet."""
    job = Job(
        id="job_2",
        status=JobStatus.queued,
        tenant="t",
        created_at=1.0,
        updated_at=1.0,
        deadline=3601.0,
        request="{}",
        model="m",
    )
    assert job.to_redis() == {
        "id": "job_2",
        "status": "queued",
        "tenant": "t",
        "created_at": "1.000",
        "updated_at": "1.000",
        "deadline": "3601.000",
        "request": "{}",
        "model": "m",
        "metadata": "null",
        "custom_id": "",
        "webhook_url": "",
        "webhook_secret": "",
    }


def test_updates_encode_like_the_record() -> None:
    assert job_fields(
        {
            "create_inflight": False,
            "possible_duplicate": True,
            "poll_errors": 0,
            "submitted_at": 2.0,
            "interaction_ids": ["a"],
            "pending_calls": None,
            "error": {"code": "x"},
        }
    ) == {
        "create_inflight": "0",
        "possible_duplicate": "1",
        "poll_errors": "0",
        "submitted_at": "2.000",
        "interaction_ids": '["a"]',
        "pending_calls": "",
        "error": '{"code": "x"}',
    }
    with pytest.raises(KeyError):
        job_fields({"not_a_field": 1})  # type: ignore[typeddict-unknown-key]


@pytest.mark.parametrize(
    ("record", "update"), [(Job, JobUpdate), (Event, EventUpdate), (Batch, BatchUpdate)]
)
def test_update_types_match_the_record(record: type, update: type) -> None:
    """Each updatable field is a field of the record, of its type (an update
    may leave out ``None``: a time that is set is never unset)."""
    declared = {f.name: str(f.type) for f in fields(record)}
    for name, ref in update.__annotations__.items():
        hint = getattr(ref, "__forward_arg__", ref)
        assert name in declared, name
        assert declared[name] in (hint, f"{hint} | None"), (name, hint, declared[name])


def test_event_and_batch() -> None:
    raw = {"id": "evt_1", "state": "dead", "job_id": "job_1", "attempts": "4", "x": "y"}
    ev = Event.from_redis(raw)
    assert ev.state is EventState.dead and ev.attempts == 4 and ev.last_attempt_at is None
    assert ev.owner_ref == "job:job_1"  # an event of an old version names only job_id
    assert Event.from_redis(ev.to_redis()) == ev and ev.to_redis()["x"] == "y"
    assert event_fields({"state": EventState.pending, "round_attempts": 0}) == {
        "state": "pending",
        "round_attempts": "0",
    }
    batch = Batch.from_redis({"id": "bat_1", "total": "3", "cancel_requested": "1"})
    assert batch.total == 3 and batch.cancel_requested and batch.status == "in_progress"
    assert batch.ref == "batch:bat_1"
    assert batch_fields({"finished_at": 5.0, "input_tokens": 9}) == {
        "finished_at": "5.000",
        "input_tokens": "9",
    }
