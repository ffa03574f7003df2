from __future__ import annotations

from starlette.datastructures import UploadFile


def read_upload(upload: UploadFile) -> bytes:
    """The bytes of an uploaded file, held in memory only (the parser never spools to
    disk). An empty file is refused where all media are checked (`ingest.media`)."""
    data: bytes = upload.file.read()
    return data
