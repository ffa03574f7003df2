from __future__ import annotations

from starlette.datastructures import UploadFile

from hashdb.errors import InvalidMedia


def read_upload(upload: UploadFile) -> bytes:
    """The bytes of an uploaded file, held in memory only (the parser never spools to disk)."""
    data = upload.file.read()
    if not data:
        raise InvalidMedia("the uploaded file is empty")
    return data
