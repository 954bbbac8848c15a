"""Images by URI, only from places the operator allowed: s3:// buckets, https:// hosts, a file:// root.

Everything else (http://, ftp://, data:, a file outside the root, a link-local address such as the
cloud metadata service 169.254.169.254) is refused with a 4xx before any connection is made. Every
fetch is capped at the request body limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import stat
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from bintally.serving.config import ServeConfig
from bintally.serving.dataplane import RequestError

MAX_REDIRECTS = 3
HTTPS_TIMEOUT_S = 10.0


def forbidden(message: str) -> RequestError:
    return RequestError(403, message)


def too_large(uri: str, limit: int) -> RequestError:
    return RequestError(413, f"{uri}: larger than the limit of {limit:,} bytes")


def refused_address(host: str) -> bool:
    """An IP literal that no allowlist may open: link-local (cloud metadata services), unspecified or multicast."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved


class Sources:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.limit = config.max_body_bytes
        self._s3 = None
        self._https = None

    async def aclose(self) -> None:
        if self._https is not None:
            await self._https.aclose()
            self._https = None

    async def fetch(self, uri: str) -> bytes:
        if not isinstance(uri, str) or not uri.strip():
            raise RequestError(400, "uri must be a non-empty string")
        if len(uri) > 4096:
            raise RequestError(400, "uri is longer than 4096 characters")
        try:
            parts = urlsplit(uri)
        except ValueError as e:
            raise RequestError(400, f"not a URI: {e}") from None
        scheme = parts.scheme.lower()
        if scheme == "file":
            return await asyncio.to_thread(self.read_file, uri, parts)
        if scheme == "s3":
            return await asyncio.to_thread(self.read_s3, uri, parts)
        if scheme == "https":
            return await self.read_https(uri)
        if scheme == "http":
            raise forbidden(f"{uri}: plain http:// is not allowed; use an allowlisted https:// host, s3:// bucket or file:// root")
        raise forbidden(f"{uri}: unsupported URI scheme {scheme + '://' if scheme else '(none)'}; "
                        "only allowlisted s3://, https:// and file:// URIs are fetched")

    # ---- file:// -----------------------------------------------------------------------------------------------
    def read_file(self, uri: str, parts) -> bytes:
        root = self.config.file_root
        if not root:
            raise forbidden(f"{uri}: file:// URIs are not allowed (the server was started without --file-root)")
        if parts.netloc not in ("", "localhost"):
            raise forbidden(f"{uri}: file:// URIs must name a local path (file:///path)")
        raw = unquote(parts.path)
        if "\x00" in raw:
            raise RequestError(400, f"{uri}: the path contains a NUL byte")
        if ".." in Path(raw).parts or not raw.startswith("/"):
            raise forbidden(f"{uri}: the path must be absolute and must not contain '..'")
        root_path = Path(root).resolve()
        try:
            resolved = Path(raw).resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            # say "not found" only inside the root: outside it, the answer must not reveal what exists
            if Path(os.path.normpath(raw)).is_relative_to(root_path):
                raise RequestError(400, f"{uri}: no such file") from None
            raise forbidden(f"{uri}: outside the allowed file root") from None
        except (OSError, RuntimeError) as e:  # a symlink loop, a permission problem on the way
            raise forbidden(f"{uri}: cannot be resolved ({e.__class__.__name__})") from None
        if not resolved.is_relative_to(root_path):
            raise forbidden(f"{uri}: outside the allowed file root (symbolic links may not lead out of it)")
        try:
            fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise RequestError(400, f"{uri}: cannot be read ({e.strerror or e})") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise RequestError(400, f"{uri}: not a regular file")
            if info.st_size > self.limit:
                raise too_large(uri, self.limit)
            data = f.read(self.limit + 1)
        if len(data) > self.limit:
            raise too_large(uri, self.limit)
        return data

    # ---- s3:// -------------------------------------------------------------------------------------------------
    def s3_client(self):
        if self._s3 is None:
            try:
                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config
            except ImportError:
                raise RequestError(501, "s3:// URIs need boto3 on the server (pip install boto3)") from None
            session = boto3.session.Session()
            signed = session.get_credentials() is not None  # no credentials: anonymous, for public buckets
            config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=10,
                            **({} if signed else {"signature_version": UNSIGNED}))
            # boto3 honours AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_S3) itself
            self._s3 = session.client("s3", config=config)
        return self._s3

    def read_s3(self, uri: str, parts) -> bytes:
        bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
        if bucket not in self.config.allow_s3_buckets:
            raise forbidden(f"{uri}: bucket {bucket!r} is not allowed (start the server with --allow-s3-bucket {bucket or 'NAME'})")
        if not key:
            raise RequestError(400, f"{uri}: no object key")
        client = self.s3_client()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = client.get_object(Bucket=bucket, Key=key)
            if answer.get("ContentLength", 0) > self.limit:
                answer["Body"].close()
                raise too_large(uri, self.limit)
            data = answer["Body"].read(self.limit + 1)
            answer["Body"].close()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "error")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NoSuchBucket") or status == 404:
                raise RequestError(400, f"{uri}: no such object") from None
            raise RequestError(502, f"{uri}: S3 refused the read ({code})") from None
        except BotoCoreError as e:
            raise RequestError(502, f"{uri}: S3 could not be reached ({e.__class__.__name__})") from None
        if len(data) > self.limit:
            raise too_large(uri, self.limit)
        return data

    # ---- https:// ----------------------------------------------------------------------------------------------
    def check_https(self, uri: str) -> None:
        parts = urlsplit(uri)
        host = (parts.hostname or "").lower()
        if parts.scheme.lower() != "https":
            raise forbidden(f"{uri}: only https:// is allowed")
        if parts.username or parts.password:
            raise forbidden(f"{uri}: credentials in the URI are not allowed")
        if not host or host not in self.config.allow_https_hosts:
            raise forbidden(f"{uri}: host {host!r} is not allowed (start the server with --allow-https-host {host or 'HOST'})")
        if refused_address(host):
            raise forbidden(f"{uri}: address {host} is never fetched (link-local, reserved or unspecified)")

    async def read_https(self, uri: str) -> bytes:
        import httpx

        self.check_https(uri)
        if self._https is None:
            self._https = httpx.AsyncClient(follow_redirects=False, timeout=HTTPS_TIMEOUT_S,
                                            headers={"Accept": "image/*", "Accept-Encoding": "identity"})
        url = uri
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._https.stream("GET", url) as answer:
                    if answer.is_redirect:
                        target = urljoin(url, answer.headers.get("Location", ""))
                        if (urlsplit(target).hostname or "").lower() != (urlsplit(url).hostname or "").lower():
                            raise forbidden(f"{uri}: redirected to another host ({urlsplit(target).hostname}); not followed")
                        self.check_https(target)
                        url = target
                        continue
                    if answer.status_code != 200:
                        raise RequestError(400 if answer.status_code in (404, 410) else 502,
                                           f"{uri}: the server answered HTTP {answer.status_code}")
                    declared = answer.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > self.limit:
                        raise too_large(uri, self.limit)
                    data = bytearray()
                    async for chunk in answer.aiter_raw():
                        data += chunk
                        if len(data) > self.limit:
                            raise too_large(uri, self.limit)
                    return bytes(data)
            except httpx.HTTPError as e:
                raise RequestError(502, f"{uri}: could not be fetched ({e.__class__.__name__})") from None
        raise RequestError(502, f"{uri}: more than {MAX_REDIRECTS} redirects")
