"""Upload storage: the multipart file copied to a temporary file the server owns, bounded by MAX_UPLOAD_MB."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest, PayloadTooLarge

_COPY_BLOCK = 1 << 20


def require_file(upload: UploadFile | str | None) -> UploadFile:
    """The form's `file`, or a 400 naming the field when it is missing (or sent as a plain text field)."""
    if upload is None or isinstance(upload, str):
        raise InvalidRequest(
            "'file' is required: send the audio as the multipart form field 'file'.", param="file", code="missing_file"
        )
    return upload


@contextlib.asynccontextmanager
async def stored_upload(upload: UploadFile, settings: Settings) -> AsyncIterator[str]:
    """Copy the upload to a temporary file we own (bounded by MAX_UPLOAD_MB); always removed afterwards."""
    limit = int(settings.max_upload_mb * 1024 * 1024)
    fd, path = tempfile.mkstemp(prefix="stt-upload-", suffix=".audio")
    try:
        with os.fdopen(fd, "wb") as out:
            size = 0
            while block := await upload.read(_COPY_BLOCK):
                size += len(block)
                if size > limit:
                    raise PayloadTooLarge(
                        f"The upload is larger than this server's limit of {settings.max_upload_mb:g} MB (MAX_UPLOAD_MB).",
                        param="file",
                    )
                await run_in_threadpool(out.write, block)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        await upload.close()
