"""Result storage through obstore: local folders (default), S3, GCS, Azure.

``INTERQ_RESULTS_URL`` picks the backend: ``file://./data/results`` (relative
paths are taken from the working directory), ``s3://bucket/prefix``,
``gs://bucket/prefix``. Credentials and endpoints come from the usual
environment variables of each cloud (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS`` ...), read by obstore.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import obstore
from obstore.store import LocalStore, from_url

from jobs.errors import ResultNotFound

__all__ = ["ResultNotFound", "ResultStore"]

if TYPE_CHECKING:
    from obstore.store import ClientConfig


class ResultStore:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        if parsed.scheme in ("", "file"):
            raw = url.removeprefix("file://")
            path = Path(raw).expanduser()
            if not path.is_absolute():
                path = Path.cwd() / path
            path.mkdir(parents=True, exist_ok=True)
            # automatic_cleanup: deleting a job's last file removes its empty folders
            self.store: Any = LocalStore(str(path), mkdir=True, automatic_cleanup=True)
        else:
            options: dict[str, Any] = {}
            client_options: ClientConfig = {}
            if parsed.scheme == "s3":
                endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
                    "AWS_ENDPOINT_URL"
                )
                if endpoint:
                    # A local / S3-compatible server: path-style addressing
                    # (unless the environment says otherwise) and, for an
                    # http:// endpoint, plain HTTP. ``allow_http`` is a client
                    # option in obstore: passed as an S3 config key it panics.
                    options["endpoint"] = endpoint
                    if "AWS_VIRTUAL_HOSTED_STYLE_REQUEST" not in os.environ:
                        options["virtual_hosted_style_request"] = False
                    if endpoint.startswith("http://"):
                        client_options["allow_http"] = True
            self.store = from_url(url, client_options=client_options or None, **options)

    async def put(self, key: str, data: bytes) -> None:
        await obstore.put_async(self.store, key, data)

    async def put_json(self, key: str, obj: Any) -> None:
        await self.put(key, json.dumps(obj, separators=(",", ":")).encode())

    async def get(self, key: str) -> bytes:
        try:
            res = await obstore.get_async(self.store, key)
        except FileNotFoundError:
            raise ResultNotFound(key) from None
        return bytes(await res.bytes_async())

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (a folder such as ``job_x/``;
        prefixes match whole path segments). Returns how many were deleted;
        objects already gone are not an error."""
        listing = obstore.list(self.store, prefix=prefix)
        paths = [m["path"] async for chunk in listing for m in chunk]
        if not paths:
            return 0
        try:
            await obstore.delete_async(self.store, paths)
        except FileNotFoundError:  # deleted meanwhile (two sweepers): one by one
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    await obstore.delete_async(self.store, path)
        return len(paths)
