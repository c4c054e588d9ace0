"""Inline media (base64 images, audio, video, documents) taken out of a result.

Each inline ``data`` part becomes its own stored file with the right extension,
and the part in the stored Interaction points at it with ``uri`` instead (a field
the SDK's content types have), so the stored result stays small and parseable.
"""

from __future__ import annotations

import base64
import binascii
import copy
import mimetypes
from dataclasses import dataclass
from typing import Any

MEDIA_TYPES = frozenset({"image", "audio", "video", "document"})
EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/mp3": ".mp3",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "audio/aac": ".aac",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "application/pdf": ".pdf",
    "text/csv": ".csv",
}


@dataclass
class MediaFile:
    name: str  # file name under the job's result folder, e.g. "v1_x-2-0.png"
    data: bytes
    mime_type: str


def extension(mime: str) -> str:
    return EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"


def extract(interaction: dict[str, Any], uri_for: Any) -> tuple[dict[str, Any], list[MediaFile]]:
    """Return a copy of ``interaction`` with inline media replaced by
    ``uri_for(name)`` and the files to store."""
    out = copy.deepcopy(interaction)
    files: list[MediaFile] = []
    steps = out.get("steps")
    if not isinstance(steps, list):
        return out, files
    prefix = str(interaction.get("id", "result")).replace("/", "_")
    for si, step in enumerate(steps):
        content = step.get("content") if isinstance(step, dict) else None
        if not isinstance(content, list):
            continue
        for ci, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") in MEDIA_TYPES):
                continue
            raw = part.get("data")
            if not isinstance(raw, str):
                continue
            try:
                data = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                continue  # not base64: leave it as the upstream sent it
            mime = str(part.get("mime_type") or "application/octet-stream")
            name = f"{prefix}-{si}-{ci}{extension(mime)}"
            files.append(MediaFile(name, data, mime))
            del part["data"]
            part["uri"] = uri_for(name)
    return out, files
