"""Where a served photo's time goes, stage by stage, without HTTP: decode, preprocess, ONNX Runtime per batch size.

    .venv/bin/python benchmarks/serving/profile_stages.py FP32_EXPORT [INT8_EXPORT] [--photos 200] [--threads 2]

Prints one JSON object. Each stage runs alone on the otherwise idle server cores, single-threaded for
decode/preprocess (what one decode thread of `bintally serve` does per photo) and with `--threads`
intra-op threads for the model. ONNX Runtime is measured with its thread pool spinning (its default)
and not spinning (`session.intra_op.allow_spinning` = 0), alone and while two threads decode photos
at the same time, as they do in a server: spinning threads compete with the decoders for the cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bintally.data.images import decode_image
from bintally.data.transforms import preprocess
from bintally.models.artifact import read_artifact


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, n: int) -> tuple[float, float]:
    """Wall and process CPU seconds per call."""
    w0, c0 = time.perf_counter(), cpu()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w0) / n, (cpu() - c0) / n


def session(path: Path, threads: int, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("exports", nargs="+")
    parser.add_argument("--photos-file", required=True)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per ONNX measurement")
    args = parser.parse_args()

    paths = [Path(p) for p in Path(args.photos_file).read_text().split()][:args.photos]
    blobs = [p.read_bytes() for p in paths]
    artifact = read_artifact(args.exports[0])
    out = {"photos": len(blobs), "mean_kb": round(sum(map(len, blobs)) / len(blobs) / 1e3, 1), "threads": args.threads}

    images = [decode_image(b) for b in blobs[:20]]  # warm-up
    w0, c0 = time.perf_counter(), cpu()
    images = [decode_image(b) for b in blobs]
    out["decode_ms"] = round((time.perf_counter() - w0) * 1000 / len(blobs), 2)
    out["decode_cpu_ms"] = round((cpu() - c0) * 1000 / len(blobs), 2)
    out["mean_pixels"] = int(np.mean([im.size[0] * im.size[1] for im in images]))
    w0, c0 = time.perf_counter(), cpu()
    arrays = [preprocess(im, artifact.transform) for im in images]
    out["preprocess_ms"] = round((time.perf_counter() - w0) * 1000 / len(blobs), 2)
    out["preprocess_cpu_ms"] = round((cpu() - c0) * 1000 / len(blobs), 2)
    x = np.stack(arrays)

    stop = threading.Event()

    def decoder():  # what the server's decode threads do meanwhile
        i = 0
        while not stop.is_set():
            preprocess(decode_image(blobs[i % len(blobs)]), artifact.transform)
            i += 1
            counts[threading.get_ident()] = counts.get(threading.get_ident(), 0) + 1

    out["onnx"] = []
    for export in args.exports:
        art = read_artifact(export)
        for spinning in (True, False):
            s = session(art.weights_file, args.threads, spinning)
            name, output = s.get_inputs()[0].name, s.get_outputs()[0].name
            for batch in (1, 4, 8, 16, 32):
                xb = np.ascontiguousarray(x[:batch])
                s.run([output], {name: xb})
                per, _ = timed(lambda s=s, output=output, name=name, xb=xb: s.run([output], {name: xb}), 1)
                n = max(2, int(args.seconds / max(per, 1e-3)))
                wall, cpu_s = timed(lambda s=s, output=output, name=name, xb=xb: s.run([output], {name: xb}), n)
                row = {"export": Path(export).name, "quantized": bool((art.export or {}).get("quantize")), "spinning": spinning,
                       "batch": batch, "ms_per_batch": round(wall * 1000, 1), "ms_per_image": round(wall * 1000 / batch, 2),
                       "cpu_ms_per_image": round(cpu_s * 1000 / batch, 2), "images_per_s": round(batch / wall, 1)}
                if batch == 16:  # the same with two decode threads busy next to it
                    counts = {}
                    stop.clear()
                    threads = [threading.Thread(target=decoder, daemon=True) for _ in range(2)]
                    for t in threads:
                        t.start()
                    t0 = time.perf_counter()
                    wall2, _ = timed(lambda s=s, output=output, name=name, xb=xb: s.run([output], {name: xb}), n)
                    elapsed = time.perf_counter() - t0
                    stop.set()
                    for t in threads:
                        t.join()
                    row["with_2_decoders"] = {"ms_per_image": round(wall2 * 1000 / batch, 2),
                                              "decoded_per_s": round(sum(counts.values()) / elapsed, 1)}
                out["onnx"].append(row)
                print(json.dumps(row), file=__import__("sys").stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
