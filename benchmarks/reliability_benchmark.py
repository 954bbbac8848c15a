"""What reliability costs and how fast a stop is, measured on this machine.

1. Stop latency: `bintally train --mode full --workers 2` (EfficientNet-Lite0, 224 px) is started as
   the leader of its own process group, as systemd or Slurm would; once it is training, the whole
   group gets SIGTERM. Measured: seconds from the signal to exit (exit code 130 expected), the
   step the checkpoint holds, and that no process of the group is left.
2. Stale-file check before training/evaluation: `drop_stale` over the mirror's manifest (size
   check, and with sha256).
3. Decoding a large JPEG: `decode_image` (draft mode above 2048 px) against a full PIL decode,
   each in a fresh process: seconds and peak resident memory.

    .venv/bin/python benchmarks/reliability_benchmark.py --mirror ../shared/abid [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENV = os.environ | {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1000000000"}


def group_alive(pgid: int) -> int:
    alive = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        alive += int(fields[2]) == pgid and fields[0] != "Z"
    return alive


def stop_latency(manifest: Path, work: Path, run: int) -> dict:
    out = work / f"stop-{run}"
    proc = subprocess.Popen([sys.executable, "-m", "bintally", "train", "--data", str(manifest), "--out", str(out), "--mode", "full",
                             "--workers", "2", "--epochs", "1", "--batch-size", "16", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=ENV)
    time.sleep(45 + 5 * run)  # model, data and two loader workers up, a few steps done
    sent = time.perf_counter()
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    latency = time.perf_counter() - sent
    time.sleep(1)
    import torch

    checkpoint = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return {"exit_code": proc.returncode, "stop_s": round(latency, 2), "checkpoint_step": checkpoint["global_step"],
            "left_in_group": group_alive(proc.pid), "message": err.strip().splitlines()[-1]}


def stale_check(manifest: Path) -> dict:
    from bintally.data.manifest import read_manifest
    from bintally.data.verify import stale_entries

    df = read_manifest(manifest)
    timings = {}
    for hashes in (False, True):
        started = time.perf_counter()
        found = stale_entries(df, verify_hashes=hashes)
        timings["sha256" if hashes else "size"] = round(time.perf_counter() - started, 3)
    return {"photos": len(df), "stale": len(found), "seconds": timings}


DECODE = """
import resource, sys, time
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
from bintally.data.images import decode_image
started = time.perf_counter()
if sys.argv[2] == "full":
    with Image.open(sys.argv[1]) as img:
        img.load(); size = img.convert("RGB").size
else:
    size = decode_image(sys.argv[1]).size
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, *size)
"""


def big_jpeg_decode(mirror: Path, work: Path) -> dict:
    from PIL import Image

    photo = next((mirror / "bin-images").glob("*.jpg"))
    big = work / "big.jpg"
    with Image.open(photo) as img:
        img.convert("RGB").resize((12000, 12000)).save(big, quality=85)
    results = {}
    for how in ("full", "decode_image"):
        line = subprocess.run([sys.executable, "-c", DECODE, str(big), how], capture_output=True, text=True, env=ENV,
                              check=True).stdout.split()
        results[how] = {"seconds": round(float(line[0]), 2), "peak_rss_mb": round(float(line[1])), "decoded": f"{line[2]}x{line[3]}"}
    return {"jpeg": "12000x12000 (144 MP)", **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "abid")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from bintally.data.index import sample_manifest

        manifest = work / "mirror.parquet"
        subprocess.run([sys.executable, "-m", "bintally", "data", "index", str(args.mirror), "--out", str(manifest), "--no-progress"],
                       check=True, env=ENV, capture_output=True)
        report = {"stale_check": stale_check(manifest), "big_jpeg": big_jpeg_decode(args.mirror, work),
                  "stop": [stop_latency(sample_manifest(), work, r) for r in range(args.repeats)]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
