"""`bintally data fetch`: download ABID photos and metadata from the bucket, concurrently and resumably.

Each object is streamed to a hidden `.part` file beside its destination, checked (byte count
against Content-Length, MD5 against a plain ETag), fsynced and only then renamed to its final
name, so an interrupted run never leaves a partial file under a final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import httpx
import tenacity

from bintally import __version__
from bintally.data.config import FetchConfig
from bintally.data.split_config import read_file_list
from bintally.errors import DataError
from bintally.io import MAX_SOURCE_BYTES, read_regular
from bintally.progress import progress_bar

FOLDERS = ("bin-images", "metadata")
PART_GLOB = ".*.part-*"
ID_PATTERN = re.compile(r"\d+")
RANGE_PATTERN = re.compile(r"\s*([0-9]+)\s*-\s*([0-9]+)\s*")
MAX_RANGE = 1_000_000  # the whole dataset is about 536,000 ids
MD5_ETAG = re.compile(r"[0-9a-f]{32}")
MAX_WAIT = 30.0  # seconds: cap on one backoff wait
CHUNK = 64 * 1024
DOWNLOADED, SKIPPED = "downloaded", "skipped"

T = TypeVar("T")


@dataclass
class FetchSummary:
    requested: int  # files (a photo, and its metadata unless turned off, per id)
    downloaded: int = 0
    skipped: int = 0  # already present (and, with verify_existing, of the bucket's size)
    failed: dict[str, str] = field(default_factory=dict)  # object key -> one-line reason
    bytes: int = 0  # downloaded
    seconds: float = 0.0

    def describe(self) -> str:
        rate = self.bytes / 1e6 / self.seconds if self.seconds else 0.0
        lines = [
            (f"{self.requested} files requested: {self.downloaded} downloaded, "
             f"{self.skipped} already present, {len(self.failed)} failed"),
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({rate:.1f} MB/s)",
        ]
        if self.failed:
            lines.append("failures:")
            lines += [f"  {key}: {reason}" for key, reason in sorted(self.failed.items())]
        return "\n".join(lines)


class RetryableError(Exception):
    """A failure another attempt may fix: HTTP 5xx or 429, a short or corrupt body."""


class FetchError(Exception):
    """A failure that ends the attempts on one file; the message is the reason reported."""


def s3_source(bucket: str, endpoint_url: str | None = None) -> str:
    """Base URL of a bucket: path-style on an S3-compatible endpoint, else AWS virtual-hosted style."""
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}"
    return f"https://{bucket}.s3.amazonaws.com"


def parse_id_range(spec: str, width: int = 5) -> list[str]:
    """An inclusive range "START-END" as ids zero-padded to `width` digits: "1-3" -> 00001..00003."""
    match = RANGE_PATTERN.fullmatch(spec)
    if not match:
        raise DataError(spec, "not an id range START-END, such as 1-1000")
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise DataError(spec, "the range ends before it starts")
    if end - start + 1 > MAX_RANGE:
        raise DataError(spec, f"range of {end - start + 1:,} ids is too large (at most {MAX_RANGE:,})")
    return [f"{i:0{width}d}" for i in range(start, end + 1)]


def ids_from_text_file(path: str | Path) -> list[str]:
    """Ids, one per line, kept as text; blank lines and # comments are skipped."""
    path = Path(path)
    try:
        lines = read_regular(path, MAX_SOURCE_BYTES, "ids file").decode("utf-8-sig").splitlines()  # a BOM is not part of an id
    except UnicodeDecodeError:
        raise DataError(path, "not a text file of ids") from None
    ids = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text and not ID_PATTERN.fullmatch(text):
            raise DataError(path, f"line {number}: not an ABID id (digits only): {text!r}")
        if text:
            ids.append(text)
    if not ids:
        raise DataError(path, "no ids in the file")
    return ids


def ids_from_file_list(path: str | Path) -> list[str]:
    """The ids a Udacity file_list.json names, sorted as text."""
    ids = sorted(read_file_list(path))
    if not ids:
        raise DataError(path, "the file list names no ids")
    return ids


def fetch(ids: list[str], config: FetchConfig, progress: bool = True) -> FetchSummary:
    """Download the photos (and metadata) of `ids` into config.out; failures are collected, not raised."""
    keys = object_keys(checked_ids(ids), config.metadata)
    prepare_folders(config.out)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO line per request would drown the progress bar
    summary = FetchSummary(requested=len(keys))
    start = time.monotonic()
    with make_client(config) as client, progress_bar(total=len(keys), unit="file", desc="fetch", enabled=progress) as bar:
        bar.set_postfix(failed=0)
        pool = ThreadPoolExecutor(max_workers=config.concurrency)
        try:
            futures = {pool.submit(fetch_object, client, key, config): key for key in keys}
            for future in as_completed(futures):
                record(summary, futures[future], future)
                bar.update()
                bar.set_postfix(failed=len(summary.failed), refresh=False)
        finally:
            pool.shutdown(cancel_futures=True)
    summary.seconds = time.monotonic() - start
    return summary


def checked_ids(ids: list[str]) -> list[str]:
    """The ids in order, without repeats; anything but digits is refused before any download."""
    if not ids:
        raise DataError("ids", "no ids to fetch")
    for i in ids:
        if not ID_PATTERN.fullmatch(i):
            raise DataError("ids", f"not an ABID id (digits only): {i!r}")
    return list(dict.fromkeys(ids))


def object_keys(ids: list[str], metadata: bool) -> list[str]:
    keys = []
    for i in ids:
        keys.append(f"bin-images/{i}.jpg")
        if metadata:
            keys.append(f"metadata/{i}.json")
    return keys


def prepare_folders(out: Path) -> None:
    """Create the bucket-layout folders and delete the .part files a killed run left behind."""
    try:
        for folder in FOLDERS:
            (out / folder).mkdir(parents=True, exist_ok=True)
            for stale in (out / folder).glob(PART_GLOB):
                stale.unlink(missing_ok=True)
    except OSError as e:
        raise DataError(out, f"cannot write the downloads here ({e.strerror})") from None


def make_client(config: FetchConfig) -> httpx.Client:
    """One client shared by all threads, its pool as large as the concurrency."""
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    # identity: the file must hold the object's own bytes, the ones Content-Length and the ETag describe
    headers = {"Accept-Encoding": "identity", "User-Agent": f"bintally/{__version__}"}
    return httpx.Client(timeout=config.timeout, limits=limits, headers=headers, follow_redirects=True)


def record(summary: FetchSummary, key: str, future: Future) -> None:
    try:
        outcome, size = future.result()
    except (FetchError, httpx.HTTPError, OSError) as e:
        summary.failed[key] = one_line(e)
        return
    if outcome == DOWNLOADED:
        summary.downloaded += 1
        summary.bytes += size
    else:
        summary.skipped += 1


def fetch_object(client: httpx.Client, key: str, config: FetchConfig) -> tuple[str, int]:
    """Download one object unless a complete copy is present: (DOWNLOADED or SKIPPED, bytes downloaded)."""
    url = f"{config.source.rstrip('/')}/{key}"
    dest = config.out / key
    if is_present(client, url, dest, config):
        return SKIPPED, 0
    return DOWNLOADED, with_retries(config, download, client, url, dest)


def is_present(client: httpx.Client, url: str, dest: Path, config: FetchConfig) -> bool:
    if not dest.exists():
        return False
    if not config.verify_existing:
        return True
    size = with_retries(config, remote_size, client, url)
    return size is None or size == dest.stat().st_size


def with_retries(config: FetchConfig, attempt: Callable[..., T], *args) -> T:
    """Call `attempt` until it succeeds, retrying transient failures with exponential backoff and jitter."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((RetryableError, httpx.TransportError)),
        stop=tenacity.stop_after_attempt(config.retries + 1),
        wait=(tenacity.wait_exponential(multiplier=config.backoff, max=MAX_WAIT)
              + tenacity.wait_random(0, config.backoff)),
        reraise=True,
    )
    try:
        return retrying(attempt, *args)
    except (RetryableError, httpx.TransportError) as e:
        attempts = retrying.statistics.get("attempt_number", 1)
        raise FetchError(f"{one_line(e)} (gave up after {attempts} attempts)") from e


def remote_size(client: httpx.Client, url: str) -> int | None:
    response = client.head(url)
    check_status(response)
    length = response.headers.get("content-length")
    return int(length) if length is not None else None


def download(client: httpx.Client, url: str, dest: Path) -> int:
    """One attempt: stream to a .part file, verify, fsync, rename into place. Returns the byte count."""
    part = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
    try:
        with client.stream("GET", url) as response:
            check_status(response)
            with open(part, "wb") as f:
                size, md5 = copy_body(response, f)
                verify_body(response, size, md5)
                f.flush()
                os.fsync(f.fileno())
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return size


def check_status(response: httpx.Response) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    response.read()  # the short error document: the connection can then be reused
    if code == 404:
        raise FetchError("not found (HTTP 404)")
    if code == 403:
        raise FetchError("access denied (HTTP 403; S3 also answers this for a missing key it may not list)")
    reason = f"HTTP {code} {response.reason_phrase}".strip()
    if code == 429 or code >= 500:
        raise RetryableError(reason)
    raise FetchError(reason)


def copy_body(response: httpx.Response, f: BinaryIO) -> tuple[int, str]:
    """Stream the raw body into `f`; returns its size and MD5."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    for chunk in response.iter_raw(CHUNK):
        f.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def verify_body(response: httpx.Response, size: int, md5: str) -> None:
    expected = response.headers.get("content-length")
    if expected is not None and int(expected) != size:
        raise RetryableError(f"truncated body: {size} of {expected} bytes")
    etag = response.headers.get("etag", "").strip('"').lower()
    if MD5_ETAG.fullmatch(etag) and etag != md5:  # multipart uploads have other ETags: size check only
        raise RetryableError(f"MD5 mismatch: body {md5}, ETag {etag}")


def one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or "no details"
    return text if isinstance(error, (FetchError, RetryableError)) else f"{type(error).__name__}: {text}"
