"""Results on S3: a real local S3 server (moto in server mode, on loopback),
interq pointed at it with ``results_url=s3://...`` and the usual AWS_* variables,
and the bucket read back directly with boto3."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from jobs.settings import Settings
from jobs.storage.results import ResultNotFound, ResultStore
from tests.conftest import free_port
from tests.helpers import app_client, job_body, running_worker, wait_terminal

REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and a free port, for this module."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 client on the local server, with the environment obstore reads
    pointing at the same server."""
    env = {
        **CREDS,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=REGION,
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture()
def bucket(s3: Any) -> str:
    name = f"interq-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture()
def s3_settings(settings: Settings, bucket: str) -> Settings:
    return settings.model_copy(update={"results_url": f"s3://{bucket}/results"})


@pytest.fixture()
async def s3_api(s3_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(s3_settings) as client:
        yield client


def keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def media_parts(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        part
        for step in result.get("steps", [])
        for part in step.get("content") or []
        if isinstance(part, dict) and part.get("type") in ("image", "audio")
    ]


@pytest.mark.parametrize(
    ("output", "kind", "ext", "mime", "magic"),
    [
        ("image", "image", ".png", "image/png", b"\x89PNG"),
        ("audio", "audio", ".wav", "audio/wav", b"RIFF"),
    ],
)
async def test_results_and_media_on_s3(
    s3_api: httpx.AsyncClient,
    s3_settings: Settings,
    s3: Any,
    bucket: str,
    output: str,
    kind: str,
    ext: str,
    mime: str,
    magic: bytes,
) -> None:
    async with running_worker(s3_settings):
        r = await s3_api.post("/v1/jobs", json=job_body(f"draw [sim duration=0.2 output={output}]"))
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        done = await wait_terminal(s3_api, [jid], timeout=15)
    assert done[jid]["status"] == "completed", done[jid]

    # In the bucket, read directly: the result JSON and the extracted file.
    keys = keys_under(s3, bucket, f"results/{jid}/")
    result_keys = [k for k in keys if k.endswith(".json")]
    file_keys = [k for k in keys if k.startswith(f"results/{jid}/files/")]
    assert result_keys == [f"results/{jid}/{done[jid]['interaction_id']}.json"], keys
    assert len(file_keys) == 1 and file_keys[0].endswith(ext), keys
    assert set(keys) == {*result_keys, *file_keys}

    raw_result = s3.get_object(Bucket=bucket, Key=result_keys[0])["Body"].read()
    stored = json.loads(raw_result)
    parts = media_parts(stored)
    assert len(parts) == 1 and parts[0]["type"] == kind
    assert "data" not in parts[0], "inline media left in the stored result"
    name = file_keys[0].rsplit("/", 1)[1]
    assert parts[0]["uri"] == f"/v1/jobs/{jid}/files/{name}"
    assert parts[0]["mime_type"] == mime
    assert any(p.get("type") == "text" for s in stored["steps"] for p in s.get("content") or [])

    raw_file = s3.get_object(Bucket=bucket, Key=file_keys[0])["Body"].read()
    assert raw_file.startswith(magic)

    # Served back by the API from S3.
    res = await s3_api.get(f"/v1/jobs/{jid}/result")
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "application/json"
    assert res.content == raw_result and res.json() == stored

    f = await s3_api.get(parts[0]["uri"])
    assert f.status_code == 200, f.text
    assert f.headers["content-type"].split(";")[0] == mime
    assert f.content == raw_file


async def test_missing_object_on_s3_is_not_found(s3_settings: Settings, bucket: str) -> None:
    store = ResultStore(s3_settings.results_url)
    await store.put("job_x/files/a.bin", b"abc")
    assert await store.get("job_x/files/a.bin") == b"abc"
    with pytest.raises(ResultNotFound):
        await store.get("job_x/nothing.json")


async def test_delete_prefix_on_s3_takes_one_jobs_folder(
    s3: Any, s3_settings: Settings, bucket: str
) -> None:
    """What retention deletes: everything under ``{job_id}/``, not a longer id."""
    store = ResultStore(s3_settings.results_url)
    for key in ("job_x/v1_a.json", "job_x/files/a.png", "job_xy/v1_b.json"):
        await store.put(key, b"1")
    assert await store.delete_prefix("job_x/") == 2
    assert await store.delete_prefix("job_x/") == 0  # again: nothing, no error
    left = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in left] == ["results/job_xy/v1_b.json"]
