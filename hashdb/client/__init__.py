"""hashdb's Python client: hash media where they are, send only their hashes.

    from hashdb.client import Client

    with Client("https://hashdb.example.org", key) as hashdb:
        result = hashdb.match("upload.jpg")          # hashed here, hashes sent
        for m in result.matches:
            print(m.media_id, m.labels, m.distance, m.variant)

Hashing uses the server's own code (`hashdb.hashing`, the signal registry), so the
answer is the one an upload of the file would get. Importing this package loads
none of the server (FastAPI, FAISS, numba, the database drivers); the hashing
libraries load on first use.
"""

from hashdb.client.client import Client, MatchOptions
from hashdb.client.http import ClientError
from hashdb.client.local import HashedMedia
from hashdb.client.results import (
    BatchResult,
    ContributedItem,
    Contribution,
    ItemError,
    Match,
    MatchResult,
    Media,
    MediaMatch,
    Skipped,
)

__all__ = [
    "BatchResult",
    "Client",
    "ClientError",
    "ContributedItem",
    "Contribution",
    "HashedMedia",
    "ItemError",
    "Match",
    "MatchOptions",
    "MatchResult",
    "Media",
    "MediaMatch",
    "Skipped",
]
