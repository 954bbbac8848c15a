"""`UriFetcher`: the bytes behind an s3://, https:// or file:// URI, under a `SourcePolicy`."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from bintally.sources.errors import invalid, refused
from bintally.sources.files import read_file
from bintally.sources.https import HttpsReader
from bintally.sources.policy import SourcePolicy
from bintally.sources.s3 import S3Reader

MAX_URI_LENGTH = 4096


class UriFetcher:
    """One S3 client and one HTTPS connection pool, made on first use; `aclose` when done."""

    def __init__(self, policy: SourcePolicy):
        self.policy = policy
        self.s3 = S3Reader(policy)
        self.https = HttpsReader(policy)

    async def aclose(self) -> None:
        await self.https.aclose()

    async def fetch(self, uri: str) -> bytes:
        """The bytes at `uri`; a SourceError when it is refused, missing, too large or unreachable."""
        if not isinstance(uri, str) or not uri.strip():
            raise invalid("uri must be a non-empty string")
        if len(uri) > MAX_URI_LENGTH:
            raise invalid(f"uri is longer than {MAX_URI_LENGTH} characters")
        try:
            parts = urlsplit(uri)
        except ValueError as e:
            raise invalid(f"not a URI: {e}") from None
        scheme = parts.scheme.lower()
        if scheme == "file":
            return await asyncio.to_thread(read_file, uri, parts, self.policy)
        if scheme == "s3":
            return await asyncio.to_thread(self.s3.read, uri, parts)
        if scheme == "https":
            return await self.https.read(uri)
        if scheme == "http":
            raise refused(f"{uri}: plain http:// is not allowed; use an allowlisted https:// host, s3:// bucket or file:// root")
        raise refused(f"{uri}: unsupported URI scheme {scheme + '://' if scheme else '(none)'}; "
                      "only allowlisted s3://, https:// and file:// URIs are fetched")
