"""`bintally data fetch` against a real local S3 server (moto), directly and through a faulty proxy."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bintally.data.fetch import (
    FetchConfig,
    FetchSummary,
    fetch,
    ids_from_file_list,
    ids_from_text_file,
    parse_id_range,
    s3_source,
)
from bintally.errors import ConfigError, DataError
from tests.cli_helpers import run_cli
from tests.s3_server import FAULTS, Faults, FaultyProxy, LocalS3

BUCKET = "abid-test"
# leading zeros and their short twins ("00121" and "121" are different photos), a large
# original (00199) and a six-digit id
SUBSET = [f"{i:05d}" for i in range(100, 130)] + ["1", "10", "100", *map(str, range(121, 131)), "00199", "200193"]
PART_GLOB = ".*.part-*"


@pytest.fixture(scope="module")
def s3(mirror):
    server = LocalS3()
    server.seed(BUCKET, mirror, SUBSET)
    yield server
    server.stop()


@pytest.fixture
def faulty(s3):
    """Drops, HTTP 500s, truncated and corrupted bodies on 48% of first and second attempts."""
    with FaultyProxy(s3.url, Faults(drop=0.12, error=0.12, truncate=0.12, corrupt=0.12, faulty_attempts=2)) as proxy:
        yield proxy


def config(endpoint: str, out: Path, **options) -> FetchConfig:
    return FetchConfig(out=out, source=s3_source(BUCKET, endpoint), concurrency=8, backoff=0.01, **options)


def keys(ids: list[str]) -> list[str]:
    return [key for i in ids for key in (f"bin-images/{i}.jpg", f"metadata/{i}.json")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_as_mirror(out: Path, mirror: Path, ids: list[str]) -> None:
    for key in keys(ids):
        assert sha256(out / key) == sha256(mirror / key), key
    assert not list(out.rglob(PART_GLOB))


def final_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_fetch_reproduces_the_bucket_through_faults(faulty, mirror, tmp_path):
    summary = fetch(SUBSET, config(faulty.url, tmp_path), progress=False)
    assert summary.failed == {}
    assert (summary.requested, summary.downloaded, summary.skipped) == (90, 90, 0)
    assert summary.bytes == sum((mirror / key).stat().st_size for key in keys(SUBSET))
    assert all(faulty.injected[kind] > 0 for kind in FAULTS), faulty.injected
    assert_same_as_mirror(tmp_path, mirror, SUBSET)


@pytest.mark.parametrize("fault, reason", [
    ("drop", "RemoteProtocolError: Server disconnected without sending a response."),
    ("error", "HTTP 500 Internal Server Error"),
    ("truncate", "RemoteProtocolError: peer closed connection without sending complete message body"),
    ("corrupt", "MD5 mismatch: body "),
])
def test_persistent_fault_fails_after_the_retries(s3, tmp_path, fault, reason):
    faults = Faults(**{fault: 1.0}, faulty_attempts=100)
    with FaultyProxy(s3.url, faults) as proxy:
        summary = fetch(["00100"], config(proxy.url, tmp_path, retries=2, metadata=False), progress=False)
    assert summary.failed["bin-images/00100.jpg"].startswith(reason)
    assert summary.failed["bin-images/00100.jpg"].endswith("(gave up after 3 attempts)")
    assert proxy.attempts["GET", f"/{BUCKET}/bin-images/00100.jpg"] == 3
    assert final_files(tmp_path) == [] and not list(tmp_path.rglob(PART_GLOB))


def test_missing_id_is_reported_and_the_others_succeed(s3, mirror, tmp_path):
    summary = fetch(["00100", "99999", "100"], config(s3.url, tmp_path), progress=False)
    assert summary.failed == {key: "not found (HTTP 404)" for key in keys(["99999"])}
    assert summary.downloaded == 4
    assert summary.describe().splitlines()[-2:] == [
        "  bin-images/99999.jpg: not found (HTTP 404)", "  metadata/99999.json: not found (HTTP 404)"]
    assert_same_as_mirror(tmp_path, mirror, ["00100", "100"])


def test_cli_exits_1_on_a_failure_and_2_on_bad_input(s3, mirror, tmp_path):
    s3_args = ["--endpoint-url", s3.url, "--bucket", BUCKET]
    run = run_cli("data", "fetch", "--ids", "00010,10", *s3_args, "--out", tmp_path)
    assert run.returncode == 1, run.stderr
    assert "4 files requested: 2 downloaded, 0 already present, 2 failed" in run.stdout
    assert run.stdout.rstrip().endswith("metadata/00010.json: not found (HTTP 404)")
    assert_same_as_mirror(tmp_path, mirror, ["10"])
    run = run_cli("data", "fetch", "--id-range", "9-1", "--out", tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip() == "error: 9-1: the range ends before it starts"


def test_second_run_skips_and_a_changed_file_is_fetched_again(faulty, mirror, tmp_path):
    ids = SUBSET[:10]
    assert fetch(ids, config(faulty.url, tmp_path), progress=False).downloaded == 20
    again = fetch(ids, config(faulty.url, tmp_path), progress=False)
    assert (again.downloaded, again.skipped, again.failed) == (0, 20, {})

    changed = tmp_path / "bin-images" / f"{ids[0]}.jpg"
    changed.write_bytes(changed.read_bytes()[:-100])
    stale = tmp_path / "metadata" / f".{ids[1]}.json.part-0badf00d"
    stale.write_bytes(b"left by a killed run")
    assert fetch(ids, config(faulty.url, tmp_path, verify_existing=False), progress=False).skipped == 20
    assert not stale.exists()
    third = fetch(ids, config(faulty.url, tmp_path), progress=False)
    assert (third.downloaded, third.skipped) == (1, 19)
    assert third.bytes == (mirror / "bin-images" / changed.name).stat().st_size
    assert_same_as_mirror(tmp_path, mirror, ids)


def test_kill_9_leaves_no_partial_file_and_a_rerun_completes(s3, mirror, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(SUBSET))
    out = tmp_path / "abid"
    args = ["data", "fetch", "--ids-file", ids_file, "--bucket", BUCKET, "--out", out]
    # every body arrives in two halves 0.2 s apart; the kill comes while a .part file is being written
    with FaultyProxy(s3.url, Faults(latency=0.01, trickle=0.2)) as slow:
        run = subprocess.Popen([sys.executable, "-m", "bintally", *map(str, args), "--endpoint-url", slow.url,
                                "--concurrency", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (len(final_files(out)) >= 10 and list(out.rglob(PART_GLOB))) and time.monotonic() < deadline:
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    present = final_files(out)
    assert 10 <= len(present) < 90
    for path in present:
        assert sha256(path) == sha256(mirror / path.relative_to(out)), path

    rerun = run_cli(*args, "--endpoint-url", s3.url)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(present)} already present" in rerun.stdout
    assert_same_as_mirror(out, mirror, SUBSET)


@pytest.mark.parametrize("spec, ids", [
    ("1-3", ["00001", "00002", "00003"]),
    (" 7 - 7 ", ["00007"]),
    ("00099-101", ["00099", "00100", "00101"]),
    ("99999-100001", ["99999", "100000", "100001"]),
])
def test_parse_id_range(spec, ids):
    assert parse_id_range(spec) == ids


def test_parse_id_range_width():
    assert parse_id_range("9-10", width=0) == ["9", "10"]


@pytest.mark.parametrize("spec, problem", [
    ("", "not an id range"), ("12", "not an id range"), ("1-", "not an id range"), ("-5", "not an id range"),
    ("a-b", "not an id range"), ("1-2-3", "not an id range"), ("1.5-3", "not an id range"),
    ("3-1", "the range ends before it starts"), ("0-1000000", "range of 1,000,001 ids is too large"),
])
def test_parse_id_range_errors(spec, problem):
    with pytest.raises(DataError, match=problem) as error:
        parse_id_range(spec)
    assert error.value.path == spec


def test_ids_from_text_file(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes(b"# ABID ids\r\n00100\r\n\r\n  100  \r\n00010 # the photo before\r\n200193\r\n")
    assert ids_from_text_file(path) == ["00100", "100", "00010", "200193"]


@pytest.mark.parametrize("text, problem", [
    ("", "no ids in the file"), ("# nothing\n\n", "no ids in the file"),
    ("00100\n1e3\n", "line 2: not an ABID id \\(digits only\\): '1e3'"),
    ("00100,00101\n", "line 1: not an ABID id"),
])
def test_ids_from_text_file_errors(tmp_path, text, problem):
    path = tmp_path / "ids.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=problem):
        ids_from_text_file(path)


def test_ids_from_text_file_missing(tmp_path):
    with pytest.raises(DataError, match="nowhere.txt: no such ids file"):
        ids_from_text_file(tmp_path / "nowhere.txt")


def test_ids_from_file_list(mirror, tmp_path):
    ids = ids_from_file_list(mirror / "file_list.json")
    assert len(ids) == 10441 and ids == sorted(set(ids))
    assert {"00710", "100313", "09915"} <= set(ids)
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"1": ["metadata/523.json", "metadata/00523.json"], "2": ["data/metadata/10.json"]}))
    assert ids_from_file_list(path) == ["00523", "10", "523"]


@pytest.mark.parametrize("text, problem", [
    (None, "no such file list"), ("{", "malformed JSON"), ("[]", "expected"), ("{}", "expected a Udacity file list"),
])
def test_ids_from_file_list_errors(tmp_path, text, problem):
    path = tmp_path / "list.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError, match=problem):
        ids_from_file_list(path)


@pytest.mark.parametrize("ids, problem", [
    ([], "no ids to fetch"), (["00100", "../x"], "not an ABID id"), (["12a"], "'12a'"),
])
def test_fetch_refuses_bad_ids_before_any_download(tmp_path, ids, problem):
    with pytest.raises(DataError, match=problem):
        fetch(ids, FetchConfig(out=tmp_path, source="http://127.0.0.1:9"), progress=False)
    assert not any(tmp_path.iterdir())


def test_output_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "taken").write_text("a file in the way")
    with pytest.raises(DataError, match="taken: cannot write the downloads here"):
        fetch(["00100"], FetchConfig(out=tmp_path / "taken", source="http://127.0.0.1:9"), progress=False)


def test_bad_config():
    for options in ({"concurrency": 0}, {"retries": -1}, {"timeout": 0}, {"source": "ftp://host/bucket"}):
        with pytest.raises(ConfigError):
            FetchConfig(**options)


def test_s3_source():
    assert s3_source("aft-vbi-pds") == "https://aft-vbi-pds.s3.amazonaws.com"
    assert s3_source("abid", "http://127.0.0.1:9000/") == "http://127.0.0.1:9000/abid"


def test_describe():
    summary = FetchSummary(requested=4, downloaded=2, skipped=1, failed={"metadata/7.json": "not found (HTTP 404)"},
                           bytes=3_000_000, seconds=2.0)
    assert summary.describe() == (
        "4 files requested: 2 downloaded, 1 already present, 1 failed\n"
        "3.0 MB in 2.0 s (1.5 MB/s)\n"
        "failures:\n"
        "  metadata/7.json: not found (HTTP 404)"
    )
