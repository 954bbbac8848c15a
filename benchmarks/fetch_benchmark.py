"""`bintally data fetch` speed-up from concurrency, against a local S3 server (moto) seeded from the mirror.

The server and a proxy adding a fixed latency to every request (a stand-in for the round trip to
the real bucket) run in a second process; the download runs here, once one file at a time and once
at the default concurrency. Every downloaded file is checked (sha256) against the mirror.

    .venv/bin/python benchmarks/fetch_benchmark.py [--n 300] [--latency 0.05]
    .venv/bin/python benchmarks/fetch_benchmark.py --full    # every mirror photo, no added latency
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bintally.data.fetch import FetchConfig, FetchSummary, fetch, s3_source
from tests.s3_server import Faults, FaultyProxy, LocalS3

MIRROR = REPO.parent / "shared" / "abid"
BUCKET = "abid-bench"
TARGET_SPEEDUP = 20.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve(conn, ids: list[str], latency: float | None) -> None:
    """Server process: seed the bucket, put the proxy in front (unless latency is None), then
    answer "cpu" with this process's CPU seconds until told "stop"."""
    s3 = LocalS3()
    start = time.monotonic()
    s3.seed(BUCKET, MIRROR, ids)
    seed_s = time.monotonic() - start
    proxy = FaultyProxy(s3.url, Faults(latency=latency)) if latency is not None else None
    conn.send((proxy.url if proxy else s3.url, seed_s))
    while conn.recv() == "cpu":
        conn.send(cpu_seconds())


class Server:
    """The seeded S3 server (and proxy) in a child process, so it does not share this one's GIL."""

    def __init__(self, ids: list[str], latency: float | None):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, ids, latency), daemon=True)
        self.process.start()
        self.url, self.seed_s = self.conn.recv()

    def cpu(self) -> float:
        self.conn.send("cpu")
        return self.conn.recv()

    def stop(self) -> None:
        self.conn.send("stop")
        self.process.join()


def mirror_ids(n: int | None) -> list[str]:
    return sorted(p.stem for p in (MIRROR / "bin-images").glob("*.jpg"))[:n]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def matching_files(out: Path, ids: list[str]) -> tuple[int, int]:
    """(files equal to the mirror's, files expected)."""
    keys = [key for i in ids for key in (f"bin-images/{i}.jpg", f"metadata/{i}.json")]
    return sum((out / key).is_file() and sha256(out / key) == sha256(MIRROR / key) for key in keys), len(keys)


def timed_fetch(server: Server, ids: list[str], concurrency: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fetch-bench-") as out:
        client_cpu, server_cpu = cpu_seconds(), server.cpu()
        summary: FetchSummary = fetch(ids, FetchConfig(out=Path(out), source=s3_source(BUCKET, server.url),
                                                       concurrency=concurrency), progress=False)
        client_cpu, server_cpu = cpu_seconds() - client_cpu, server.cpu() - server_cpu
        matched, expected = matching_files(Path(out), ids)
    files = summary.requested
    return {"concurrency": concurrency, "files": files, "failed": len(summary.failed), "seconds": summary.seconds,
            "mb": summary.bytes / 1e6, "matched": matched, "expected": expected,
            "client_cpu_ms": 1000 * client_cpu / files, "server_cpu_ms": 1000 * server_cpu / files}


def row(label: str, r: dict, speedup: str) -> str:
    return (f"| {label} | {r['concurrency']} | {r['files']} | {r['seconds']:.2f} | {r['files'] / r['seconds']:.0f} | "
            f"{r['mb'] / r['seconds']:.1f} | {r['client_cpu_ms']:.1f} | {r['server_cpu_ms']:.1f} | "
            f"{r['matched']}/{r['expected']} | {speedup} |")


HEADER = ("| run | concurrency | files | wall s | files/s | MB/s | client CPU ms/file | server CPU ms/file "
          "| sha256 equal | speed-up |\n|---|---|---|---|---|---|---|---|---|---|")


def speedup_benchmark(n: int, latency: float, concurrency: int) -> bool:
    """Prints the table; True when every file of both runs equals the mirror's."""
    ids = mirror_ids(n)
    server = Server(ids, latency)
    try:
        sequential = timed_fetch(server, ids, 1)
        concurrent = timed_fetch(server, ids, concurrency)
    finally:
        server.stop()
    ratio = sequential["seconds"] / concurrent["seconds"]
    print(f"{n} photos + metadata, {latency * 1000:.0f} ms added per request; seeding took {server.seed_s:.1f} s\n")
    print(HEADER)
    print(row("sequential", sequential, "1.0x"))
    print(row("concurrent", concurrent, f"**{ratio:.1f}x**"))
    print(f"\nspeed-up {ratio:.1f}x: target {TARGET_SPEEDUP:.0f}x {'met' if ratio >= TARGET_SPEEDUP else 'NOT met'}")
    return all(r["matched"] == r["expected"] and not r["failed"] for r in (sequential, concurrent))


def full_check(concurrency: int) -> bool:
    ids = mirror_ids(None)
    server = Server(ids, latency=None)
    try:
        result = timed_fetch(server, ids, concurrency)
    finally:
        server.stop()
    print(f"all {len(ids)} mirror photos + metadata, directly from the S3 server; seeding took {server.seed_s:.1f} s\n")
    print(HEADER)
    print(row("full", result, "-"))
    return result["matched"] == result["expected"] and not result["failed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="photos (each with its metadata) to fetch")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the proxy adds to every request")
    parser.add_argument("--concurrency", type=int, default=FetchConfig.concurrency)
    parser.add_argument("--full", action="store_true", help="fetch every mirror file once instead, and check them all")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    ok = full_check(args.concurrency) if args.full else speedup_benchmark(args.n, args.latency, args.concurrency)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
