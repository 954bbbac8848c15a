"""Serving benchmarks: `bintally serve` (ONNX fp32 and int8) against a seed-style server and LitServe.

    .venv/bin/python benchmarks/serving_benchmark.py [--quick]

One command runs everything on loopback HTTP, with real ABID photos going in (each request a
different photo, rotating over `--photos` of them) and counts coming out:

1. throughput (images/s) and latency (p50/p90/p99) at concurrency 1, 8 and 32 of
   a. `bintally serve` on the ONNX export (fp32) and on the int8 export, POST /v1/count, image/jpeg bodies;
   b. a seed-style server (benchmarks/serving/seed_server.py: eager torchvision ResNet50, random init,
      one photo per request, `http.server`);
   c. LitServe (benchmarks/serving/litserve_server.py) serving the same ONNX exports with its own batching
      (multipart bodies: LitServe does not take raw image bodies);
2. a sweep of `--max-batch-size` / `--max-wait-ms` at concurrency 32 (the best few also at 8 and 1);
3. a load run (>= 10,000 requests at concurrency 32: errors, and the server's RSS after warm-up and at the end);
4. an overload run (`--queue-size 2` at concurrency 32: 503 + Retry-After, and no other 5xx).

The load generator is wrk (`apt-get install wrk`; one thread, C connections, closed loop) with
benchmarks/serving/rotate.lua. LitServe is installed on first use, outside the project's environment,
into /tmp/bintally-bench-env (`pip install --no-deps --target`; it never brings a torch). Every server
uses 2 threads for inference. Results: benchmarks/results/serving.json and a markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "serving"
PYTHON = sys.executable
BINTALLY = [PYTHON, "-m", "bintally"]
WORK = Path("/tmp/bintally-bench")
ENV_DIR = Path("/tmp/bintally-bench-env")
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"  # --out changes it
MIRROR = ROOT.parent / "shared" / "abid" / "bin-images"
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1000000000"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
THREADS = 2
STAGES = ["checks", "matrix", "sweep", "load", "overload", "variants", "profile"]

QUICK = dict(warmup_s=2, measure_s=4, sweep_measure_s=3, load_requests=600, load_warmup=300, overload_s=4, photos=100,
             sweep=[(1, 0), (8, 5), (16, 5), (32, 5)], sweep_top=1, concurrency=[1, 8, 32])
FULL = dict(warmup_s=4, measure_s=15, sweep_measure_s=10, load_requests=10_000, load_warmup=2000, overload_s=10, photos=500,
            sweep=[(1, 0)] + [(b, w) for b in (4, 8, 16, 32) for w in (2, 5, 10)], sweep_top=3, concurrency=[1, 8, 32])


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the machine


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    versions = {}
    code = ("import json, importlib\nv = {}\nfor m in ['torch', 'torchvision', 'onnxruntime', 'onnx', 'fastapi', 'uvicorn', "
            "'PIL', 'numpy', 'bintally']:\n    try: v[m] = importlib.import_module(m).__version__\n    except Exception: v[m] = None\n"
            "print(json.dumps(v))")
    versions = json.loads(subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout)
    litserve = next(ENV_DIR.glob("litserve-*.dist-info"), None)
    versions["litserve"] = litserve.name.removesuffix(".dist-info").split("-")[1] if litserve else None
    versions["python"] = platform.python_version()
    versions["wrk"] = (subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
                       if shutil.which("wrk") else None)
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem / 2**20, 1), "kernel": platform.release(),
            "versions": versions, "date": datetime.datetime.now().isoformat(timespec="seconds")}


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# ---------------------------------------------------------------------------------------------- processes


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


class Server:
    """A server in its own process group, started, checked for health and stopped by this benchmark."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, env: dict | None = None):
        self.name, self.cmd, self.port, self.health = name, cmd, port, health
        self.env = {**os.environ, **TUNED_MALLOC, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = WORK / "logs" / f"{name}-{port}.log"
        self.start_s = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 300) -> "Server":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=open(self.log_path, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url(self.health), timeout=2) as r:
                    if r.status == 200:
                        self.start_s = time.perf_counter() - t0
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text().strip().splitlines()[-6:])
        except OSError:
            return ""

    @property
    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this benchmark created for the server
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def bintally_server(model: Path, port: int, batch: int | None = None, wait: float | None = None, queue: int | None = None,
                    name: str = "bintally", variant: list[str] | None = None) -> Server:
    launcher = [PYTHON, str(HERE / "serve_variant.py"), *variant, "--"] if variant else BINTALLY
    cmd = [*launcher, "serve", "--model", str(model), "--port", str(port), "--threads", str(THREADS), "--log-level", "warning"]
    if batch is not None:
        cmd += ["--max-batch-size", str(batch)]
    if wait is not None:
        cmd += ["--max-wait-ms", str(wait)]
    if queue is not None:
        cmd += ["--queue-size", str(queue)]
    return Server(name, cmd, port, "/ping")


def seed_server(port: int, mode: str) -> Server:
    return Server(f"seed-{mode}", [PYTHON, str(HERE / "seed_server.py"), "--port", str(port), "--threads", str(THREADS),
                                   "--mode", mode], port, "/")


def litserve_server(model: Path, port: int, batch: int, wait: float, fast_queue: bool, name: str = "litserve") -> Server:
    cmd = [PYTHON, str(HERE / "litserve_server.py"), "--model", str(model), "--port", str(port), "--threads", str(THREADS),
           "--max-batch-size", str(batch), "--batch-timeout-ms", str(wait)] + (["--fast-queue"] if fast_queue else [])
    return Server(name, cmd, port, "/health", env={"PYTHONPATH": f"{ENV_DIR}{os.pathsep}{ROOT}"})


def install_litserve() -> None:
    if (ENV_DIR / "litserve").is_dir() and (ENV_DIR / "zmq").is_dir():
        return
    log("installing LitServe into", ENV_DIR, "(outside the project's environment)")
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--target", str(ENV_DIR), "litserve", "pyzmq"], check=True)


# ---------------------------------------------------------------------------------------------- load generator


def wrk(url: str, concurrency: int, photos: Path, seconds: float, mode: str = "raw", expect: str = "",
        stop_after: int = 0, server: Server | None = None, timeout_s: int = 60) -> dict:
    """One closed-loop wrk run; images/s counts 200 answers only; CPU of the server and of wrk per image."""
    env = {**os.environ, "BENCH_PHOTOS": str(photos), "BENCH_MODE": mode, "BENCH_EXPECT": expect,
           "BENCH_STOP_AFTER": str(stop_after)}
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", f"--timeout={timeout_s}s", "-s", str(HERE / "rotate.lua"), url]
    pids = server.pids if server else []
    cpu0 = cpu_seconds(pids)
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if stop_after:  # wrk stops its thread after stop_after answers, but sleeps for -d: interrupt it then
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("STOPPED"):
                proc.send_signal(signal.SIGINT)
        proc.wait()
        out = subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), proc.stderr.read())
    else:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1 = cpu_seconds(pids)
    line = next((line for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[len("RESULT "):])
    duration = r["duration_us"] / 1e6
    ok = r["n200"]
    lat = r["latency_us"]
    socket_errors = sum(v for k, v in r["errors"].items() if k != "status")
    client_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
    return {
        "concurrency": concurrency, "body": mode, "duration_s": round(duration, 2), "requests": r["requests"], "ok": ok,
        "images_per_s": round(ok / duration, 2) if duration else 0.0,
        "p50_ms": round(lat["p50"] / 1000, 1), "p90_ms": round(lat["p90"] / 1000, 1), "p99_ms": round(lat["p99"] / 1000, 1),
        "max_ms": round(lat["max"] / 1000, 1), "mean_ms": round(lat["mean"] / 1000, 1),
        "status": {"200": ok, "503": r["n503"], "other_5xx": r["n5xx_other"], "4xx": r["n4xx"], "other": r["n_other"]},
        "n503_without_retry_after": r["n503_no_retry_after"], "bad_bodies": r["n_bad_body"], "socket_errors": r["errors"],
        "errors": r["requests"] - ok + socket_errors,  # non-200 answers + connect/read/write errors + timeouts
        "server_cpu_ms_per_image": round((cpu1 - cpu0) * 1000 / ok, 1) if ok and pids else None,
        "server_cpu_cores": round((cpu1 - cpu0) / duration, 2) if duration and pids else None,
        "client_cpu_ms_per_request": round(client_cpu * 1000 / max(1, r["requests"]), 2),
    }


# ---------------------------------------------------------------------------------------------- bintally's own metrics


def scrape(server: Server) -> dict:
    """Sums and counts of bintally's histograms (and the images counter) from /metrics."""
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(bintally_(?:request_duration_seconds|queue_duration_seconds|preprocess_duration_seconds|"
                     r"compute_duration_seconds|batch_size)_(?:sum|count)|bintally_images_total) ([0-9.e+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def profile(before: dict, after: dict) -> dict:
    """Where the time went inside the server during a run (means, from the server's histograms)."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}

    def mean(name, scale=1000.0):
        n = d.get(f"{name}_count", 0)
        return round(d.get(f"{name}_sum", 0) / n * scale, 2) if n else None

    batches = d.get("bintally_batch_size_count", 0)
    images = d.get("bintally_batch_size_sum", 0)
    return {
        "batches": int(batches), "mean_batch_size": round(images / batches, 2) if batches else None,
        "request_ms": mean("bintally_request_duration_seconds"),
        "decode_preprocess_ms_per_request": mean("bintally_preprocess_duration_seconds"),
        "queue_wait_ms_per_image": mean("bintally_queue_duration_seconds"),
        "compute_ms_per_batch": mean("bintally_compute_duration_seconds"),
        "compute_ms_per_image": round(d.get("bintally_compute_duration_seconds_sum", 0) * 1000 / images, 2) if images else None,
    }


# ---------------------------------------------------------------------------------------------- model and exports


def prepare_model(args) -> tuple[Path, str]:
    """The model to serve (an artifact folder) and a sentence saying which it is."""
    if args.model:
        return Path(args.model), f"given: {args.model}"
    demo = ROOT / "runs" / "demo" / "model"
    about = ("the `make demo` run (EfficientNet-Lite0 at 224 px, frozen ImageNet backbone + trained linear head, "
             "test-time augmentation on)")
    for folder in (demo, demo / "model"):  # a run's model/ folder, or the run folder itself
        if (folder / "model.json").is_file():
            return folder, f"{folder.relative_to(ROOT)}: {about}"
    out = WORK / "model"
    note = out / "ABOUT.txt"
    if not (out / "model.json").is_file():
        log("no demo run: building an ImageNet EfficientNet-Lite0 with an untrained head in", out)
        subprocess.run([PYTHON, "-c", "import sys; sys.path.insert(0, 'tests'); from conftest import make_artifact; "
                        "make_artifact(sys.argv[1], backbone='efficientnet_lite0', image_size=224, pretrained=True)", str(out)],
                       check=True, cwd=ROOT, env={**os.environ, **TUNED_MALLOC})
        note.write_text(f"{out}: EfficientNet-Lite0 at 224 px, ImageNet weights, untrained linear head "
                        "(tests/conftest.py make_artifact; the same compute as a trained one)\n")
    return out, note.read_text().strip() if note.is_file() else f"{out} (made by an earlier run of this benchmark)"


def model_version(model: Path) -> str | None:
    try:
        return json.loads((model / "model.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def model_tta(model: Path) -> bool | None:
    try:
        return json.loads((model / "model.json").read_text())["tta"]
    except (OSError, ValueError, KeyError):
        return None


def export(model: Path, out: Path, quantize: str | None, fresh: bool) -> dict:
    """`bintally export --format onnx [--quantize int8]` into `out` (reused when it exports this model version)."""
    meta = out / "model.json"
    if meta.is_file() and not fresh:
        source = (json.loads(meta.read_text()).get("export") or {}).get("source") or {}
        if source.get("version") == model_version(model) and json.loads(meta.read_text()).get("tta") == model_tta(model):
            return {"dir": str(out), "export_s": None, "reused": True, **onnx_size(out)}
    cmd = [*BINTALLY, "export", "--model", str(model), "--out", str(out), "--format", "onnx", "--overwrite", "--no-progress"]
    cmd += ["--quantize", quantize] if quantize else []
    log(" ".join(cmd[2:]))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **TUNED_MALLOC}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bintally export failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return {"dir": str(out), "export_s": round(time.perf_counter() - t0, 1), "reused": False, "stdout": done.stdout.strip(),
            **onnx_size(out)}


def onnx_size(folder: Path) -> dict:
    meta = json.loads((folder / "model.json").read_text())
    return {"weights": meta["weights"], "version": meta["version"], "tta": meta.get("tta"),
            "mb": round((folder / meta["weights"]).stat().st_size / 1e6, 1), "export": meta.get("export")}


# ---------------------------------------------------------------------------------------------- checks


def post(url: str, data: bytes, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    b = "----bintallybenchboundary7MA4YWxk"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'
            .encode() + data + f"\r\n--{b}--\r\n".encode())
    return body, f"multipart/form-data; boundary={b}"


def counts_of(server: Server, photos: list[Path], kind: str) -> list[int]:
    """The counts a server answers for each photo, one request each."""
    counts = []
    for p in photos:
        data = p.read_bytes()
        if kind == "bintally":
            status, doc = post(server.url("/v1/count"), data, "image/jpeg")
        else:
            status, doc = post(server.url("/predict"), *multipart(data, p.name))
        if status != 200:
            raise RuntimeError(f"{server.name}: {p.name} answered {status}: {doc}")
        counts.append(doc["results"][0]["count"])
    return counts


# ---------------------------------------------------------------------------------------------- the runs


def settle(server: Server, timeout: float = 120) -> float:
    """Wait until the server is idle (under 0.3 cores twice in a row over 0.5 s; LitServe polls its queues at about
    0.17 cores when idle): requests of connections that a finished wrk run closed may still be queued in it
    (a single-threaded http.server works through its whole backlog)."""
    t0, quiet = time.perf_counter(), 0
    while time.perf_counter() - t0 < timeout and quiet < 2:
        pids = server.pids
        c0 = cpu_seconds(pids)
        time.sleep(0.5)
        quiet = quiet + 1 if cpu_seconds(pids) - c0 < 0.15 else 0
    return time.perf_counter() - t0


def measure(server: Server, concurrency: int, photos_file: Path, cfg: dict, path: str, mode: str, expect: str,
            seconds: float | None = None, metrics: bool = False) -> dict:
    url = server.url(path)
    settle(server)
    wrk(url, concurrency, photos_file, cfg["warmup_s"], mode, expect, server=server)  # warm-up, discarded
    discarded = []
    for attempt in range(2):
        settle(server)
        before = scrape(server) if metrics else None
        result = wrk(url, concurrency, photos_file, seconds or cfg["measure_s"], mode, expect, server=server)
        if metrics:
            result["profile"] = profile(before, scrape(server))
        result["load_average"] = load_average()
        # At concurrency >= 8 every server here keeps both cores busy (about 2.0 cores measured); now and then the
        # server process got only about 1 core for a whole run (the machine is a VM; nothing else was running):
        # such a run is measured once more, and the discarded one kept in the JSON.
        if concurrency < 8 or (result["server_cpu_cores"] or 2) >= 1.5 or attempt:
            break
        log(f"{server.name} c={concurrency}: the server got {result['server_cpu_cores']} cores only; measuring again")
        discarded.append(result)
    if discarded:
        result["discarded_runs_one_core"] = discarded
    return result


def row_summary(name: str, r: dict) -> str:
    return (f"{name} c={r['concurrency']}: {r['images_per_s']:.1f} img/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
            f"non-200 {r['requests'] - r['ok']}, server CPU {r['server_cpu_ms_per_image']} ms/img")


def run_matrix(cfg, args, exports, photos_file, results) -> None:
    results["matrix"] = []
    ports = iter(range(args.port, args.port + 1000))
    servers = [("bintally serve, ONNX fp32", lambda p: bintally_server(Path(exports["fp32"]["dir"]), p, name="bintally-fp32"),
                "/v1/count", "raw", '"count"', True)]
    if "int8" in exports:
        servers.append(("bintally serve, ONNX int8", lambda p: bintally_server(Path(exports["int8"]["dir"]), p, name="bintally-int8"),
                        "/v1/count", "raw", '"count"', True))
    servers.append((f"seed-style (eager ResNet50, http.server {args.seed_mode})", lambda p: seed_server(p, args.seed_mode), "/",
                    "raw", '"logits"', False))
    lit = f"LitServe {args.lit_batch}/{args.lit_wait:g} ms"
    servers.append((f"{lit}, ONNX fp32", lambda p: litserve_server(Path(exports["fp32"]["dir"]), p, args.lit_batch, args.lit_wait,
                                                                  args.fast_queue, "litserve-fp32"), "/predict", "multipart",
                    '"count"', False))
    if "int8" in exports and not args.quick:
        servers.append((f"{lit}, ONNX int8", lambda p: litserve_server(Path(exports["int8"]["dir"]), p, args.lit_batch,
                                                                      args.lit_wait, args.fast_queue, "litserve-int8"),
                        "/predict", "multipart", '"count"', False))
    for name, make, path, mode, expect, metrics in servers:
        server = make(next(ports))
        log("starting", name)
        with server:
            entry = {"server": name, "start_s": round(server.start_s, 1), "runs": []}
            for c in cfg["concurrency"]:
                r = measure(server, c, photos_file, cfg, path, mode, expect, metrics=metrics)
                log(row_summary(name, r))
                entry["runs"].append(r)
            if name.startswith("bintally serve, ONNX fp32"):  # the same photos as multipart, LitServe's body format
                r = measure(server, 32, photos_file, cfg, path, "multipart", expect, metrics=metrics)
                log(row_summary(name + " (multipart)", r))
                entry["runs"].append(r)
            entry["rss_mb"] = round(rss_bytes(server.pids) / 2**20)
        results["matrix"].append(entry)
        save(results)


def run_checks(exports, photos, args, results) -> None:
    """The same counts from bintally serve and LitServe on the same export; int8 agreement with fp32."""
    sample = photos[:args.check_photos]
    counts = {}
    port = args.port + 1100
    for key in exports:
        with bintally_server(Path(exports[key]["dir"]), port, name=f"check-{key}") as s:
            counts[f"bintally-{key}"] = counts_of(s, sample, "bintally")
        port += 1
    with litserve_server(Path(exports["fp32"]["dir"]), port, 8, 5, args.fast_queue, "check-litserve") as s:
        counts["litserve-fp32"] = counts_of(s, sample, "litserve")
    check = {"photos": len(sample),
             "bintally_fp32_equals_litserve_fp32": counts["bintally-fp32"] == counts["litserve-fp32"]}
    if "bintally-int8" in counts:
        same = sum(a == b for a, b in zip(counts["bintally-fp32"], counts["bintally-int8"]))
        check["int8_count_agreement_with_fp32"] = round(same / len(sample), 3)
    check["count_histogram_fp32"] = {str(k): counts["bintally-fp32"].count(k) for k in sorted(set(counts["bintally-fp32"]))}
    results["checks"] = check
    log("checks:", check)
    save(results)


def run_sweep(cfg, args, exports, photos_file, results) -> None:
    model = Path(exports[args.sweep_export]["dir"])
    port = args.port + 1200
    sweep = []
    for batch, wait in cfg["sweep"]:
        with bintally_server(model, port, batch, wait, name=f"sweep-b{batch}-w{wait}") as s:
            r = measure(s, 32, photos_file, cfg, "/v1/count", "raw", '"count"', cfg["sweep_measure_s"], metrics=True)
        r.update(max_batch_size=batch, max_wait_ms=wait)
        log(row_summary(f"sweep b={batch} w={wait}", r))
        sweep.append(r)
        port += 1
    results["sweep"] = {"export": args.sweep_export, "c32": sweep, "top": []}
    save(results)
    best = sorted(sweep, key=lambda r: -r["images_per_s"])[:cfg["sweep_top"]]
    for r32 in best:
        batch, wait = r32["max_batch_size"], r32["max_wait_ms"]
        entry = {"max_batch_size": batch, "max_wait_ms": wait, "c32": {k: r32[k] for k in ("images_per_s", "p50_ms", "p99_ms")}}
        with bintally_server(model, port, batch, wait, name=f"top-b{batch}-w{wait}") as s:
            for c in (8, 1):
                r = measure(s, c, photos_file, cfg, "/v1/count", "raw", '"count"', cfg["sweep_measure_s"], metrics=True)
                log(row_summary(f"top b={batch} w={wait}", r))
                entry[f"c{c}"] = {k: r[k] for k in ("images_per_s", "p50_ms", "p99_ms", "profile")}
        port += 1
        results["sweep"]["top"].append(entry)
        save(results)


def run_load(cfg, args, exports, photos_file, results) -> None:
    """>= N requests at concurrency 32: errors, and the server's RSS after warm-up, during and at the end."""
    model = Path(exports[args.sweep_export]["dir"])
    with bintally_server(model, args.port + 1300, name="load") as s:
        url = s.url("/v1/count")
        main_pid = s.proc.pid
        rss_start = rss_bytes([main_pid])
        # warm-up: RSS climbs in steps to its plateau (about 660 MB here) while new peaks of images in flight and
        # batch shapes occur (ONNX Runtime's arena, glibc heap: with bintally's malloc settings freed memory stays
        # mapped); measured on this machine it reached the plateau within 1,500 to 3,500 requests
        warmup = []
        for i in range(max(1, cfg["load_warmup"] // 500)):
            wrk(url, 32, photos_file, 600, "raw", '"count"', stop_after=500, server=s)
            warmup.append(((i + 1) * 500, round(rss_bytes([main_pid]) / 2**20, 1)))
        rss_warm, rss_warm_tree = rss_bytes([main_pid]), rss_bytes(s.pids)
        samples, stop = [], threading.Event()

        def sample():
            t0 = time.perf_counter()
            while not stop.wait(2.0):
                samples.append((round(time.perf_counter() - t0, 1), round(rss_bytes([main_pid]) / 2**20, 1)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        r = wrk(url, 32, photos_file, 1800, "raw", '"count"', stop_after=cfg["load_requests"], server=s)
        stop.set()
        sampler.join()
        rss_end, rss_end_tree = rss_bytes([main_pid]), rss_bytes(s.pids)
        r.update(warmup_requests=warmup[-1][0], rss_start_mb=round(rss_start / 2**20, 1), rss_during_warmup_mb=warmup,
                 rss_after_warmup_mb=round(rss_warm / 2**20, 1), rss_end_mb=round(rss_end / 2**20, 1),
                 rss_max_mb=max([m for _, m in samples] + [round(rss_end / 2**20, 1)]),
                 rss_growth_pct=round((rss_end / rss_warm - 1) * 100, 2),
                 rss_tree_after_warmup_mb=round(rss_warm_tree / 2**20, 1), rss_tree_end_mb=round(rss_end_tree / 2**20, 1),
                 rss_samples_mb=samples[:: max(1, len(samples) // 40)], load_average=load_average())
    log(f"load: {r['requests']} requests, {r['ok']} ok, socket errors {r['socket_errors']}, {r['images_per_s']} img/s, "
        f"p99 {r['p99_ms']} ms, RSS {r['rss_after_warmup_mb']} -> {r['rss_end_mb']} MB ({r['rss_growth_pct']:+.1f}%)")
    results["load"] = r
    save(results)


def run_overload(cfg, args, exports, photos_file, results) -> None:
    model = Path(exports[args.sweep_export]["dir"])
    with bintally_server(model, args.port + 1400, queue=2, name="overload") as s:
        r = wrk(s.url("/v1/count"), 32, photos_file, cfg["overload_s"], "raw", '"count"', server=s)
        r["queue_size"] = 2
    log(f"overload: {r['status']}, 503 without Retry-After {r['n503_without_retry_after']}, socket errors {r['socket_errors']}")
    results["overload"] = r
    save(results)


def run_variants(cfg, args, exports, photos_file, results) -> None:
    """`bintally serve` with ONNX Runtime's thread spinning off (benchmarks/serving/serve_variant.py), next to the default."""
    port = args.port + 1500
    out = []
    for key in exports:
        for variant in ([], ["--no-spin"]):
            with bintally_server(Path(exports[key]["dir"]), port, name=f"variant-{key}{''.join(variant)}", variant=variant) as s:
                for c in (8, 32):
                    r = measure(s, c, photos_file, cfg, "/v1/count", "raw", '"count"', cfg["sweep_measure_s"], metrics=True)
                    r.update(export=key, variant=" ".join(variant) or "default")
                    log(row_summary(f"variant {key} {r['variant']}", r))
                    out.append(r)
            port += 1
    results["variants"] = out
    save(results)


def run_profile(cfg, args, exports, photos_file, results) -> None:
    """Stage by stage, without HTTP (benchmarks/serving/profile_stages.py, in its own process)."""
    cmd = [PYTHON, str(HERE / "profile_stages.py"), *[exports[k]["dir"] for k in exports], "--photos-file", str(photos_file),
           "--photos", str(min(200, cfg["photos"])), "--threads", str(THREADS), "--seconds", "1" if args.quick else "3"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **TUNED_MALLOC}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"profile failed: {done.stderr[-800:]}")
    prof = json.loads(done.stdout.strip().splitlines()[-1])
    prof["load_average"] = load_average()
    results["profile"] = prof
    log("profile:", {k: v for k, v in prof.items() if k != "onnx"})
    save(results)


# ---------------------------------------------------------------------------------------------- report


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(RESULTS)


def targets(results: dict) -> dict:
    rows = {e["server"]: {(r["concurrency"], r["body"]): r for r in e["runs"]} for e in results["matrix"]}

    def find(prefix):
        return next((v for k, v in rows.items() if k.startswith(prefix)), None)

    out = {}
    fp32, int8, seed = find("bintally serve, ONNX fp32"), find("bintally serve, ONNX int8"), find("seed-style")
    lit, lit8 = find("LitServe") , next((v for k, v in rows.items() if k.startswith("LitServe") and "int8" in k), None)
    for label, ours in (("fp32", fp32), ("int8", int8)):
        if not ours:
            continue
        c32, c8 = ours[(32, "raw")], ours[(8, "raw")]
        t = {"images_per_s_c32": c32["images_per_s"], "target_100_images_per_s_c32": c32["images_per_s"] >= 100,
             "p99_ms_c8": c8["p99_ms"], "target_p99_under_250ms_c8": c8["p99_ms"] < 250}
        if seed and seed[(32, "raw")]["images_per_s"]:
            ratio = c32["images_per_s"] / seed[(32, "raw")]["images_per_s"]
            t.update(vs_seed_c32=round(ratio, 1), target_10x_seed=ratio >= 10)
        ref = lit8 if label == "int8" and lit8 else lit
        if ref and ref[(32, "multipart")]["images_per_s"]:
            r = ref[(32, "multipart")]
            t.update(framework_images_per_s_c32=r["images_per_s"], framework_p99_ms_c32=r["p99_ms"],
                     vs_framework_c32=round(c32["images_per_s"] / r["images_per_s"], 2),
                     target_beats_framework=c32["images_per_s"] >= r["images_per_s"] and c32["p99_ms"] <= r["p99_ms"])
        out[label] = t
    if "load" in results:
        r = results["load"]
        out["load"] = {"requests": r["requests"], "errors": r["errors"], "rss_growth_pct": r["rss_growth_pct"],
                       "target_10k_no_errors": r["requests"] >= 10_000 and r["errors"] == 0 and r["bad_bodies"] == 0,
                       "target_rss_growth_le_10pct": r["rss_growth_pct"] <= 10}
    if "overload" in results:
        r = results["overload"]
        out["overload"] = {"status": r["status"], "target_503_with_retry_after_no_other_5xx":
                           r["status"]["503"] > 0 and r["n503_without_retry_after"] == 0 and r["status"]["other_5xx"] == 0}
    return out


def markdown(results: dict) -> str:
    lines = ["| server | c | images/s | p50 ms | p90 ms | p99 ms | non-200 | server CPU ms/img | mean batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in results["matrix"]:
        for r in e["runs"]:
            body = "" if r["body"] == "raw" or e["server"].startswith("LitServe") else " (multipart)"
            batch = (r.get("profile") or {}).get("mean_batch_size")
            lines.append(f"| {e['server']}{body} | {r['concurrency']} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | "
                         f"{r['p90_ms']:.0f} | {r['p99_ms']:.0f} | {r['requests'] - r['ok']} | {r['server_cpu_ms_per_image']} | "
                         f"{batch if batch is not None else ''} |")
    if results.get("sweep"):
        lines += ["", f"Batching sweep (`bintally serve`, ONNX {results['sweep']['export']}, concurrency 32):", "",
                  "| max batch | max wait ms | images/s | p50 ms | p99 ms | mean batch | compute ms/batch | decode+pre ms/req |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["sweep"]["c32"]:
            p = r["profile"]
            lines.append(f"| {r['max_batch_size']} | {r['max_wait_ms']:g} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | "
                         f"{r['p99_ms']:.0f} | {p['mean_batch_size']} | {p['compute_ms_per_batch']} | "
                         f"{p['decode_preprocess_ms_per_request']} |")
        if results["sweep"]["top"]:
            lines += ["", "| max batch | max wait ms | c=32 img/s, p99 ms | c=8 img/s, p99 ms | c=1 img/s, p50 ms |", "|---|---|---|---|---|"]
            for t in results["sweep"]["top"]:
                lines.append(f"| {t['max_batch_size']} | {t['max_wait_ms']:g} | {t['c32']['images_per_s']:.1f}, {t['c32']['p99_ms']:.0f} | "
                             f"{t['c8']['images_per_s']:.1f}, {t['c8']['p99_ms']:.0f} | {t['c1']['images_per_s']:.1f}, "
                             f"{t['c1']['p50_ms']:.0f} |")
    if results.get("variants"):
        lines += ["", "`bintally serve` with ONNX Runtime's thread spinning on (its default) and off (serve_variant.py --no-spin):", "",
                  "| export | variant | c | images/s | p50 ms | p99 ms | server CPU ms/img | compute ms/img | mean batch |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["variants"]:
            p = r["profile"]
            lines.append(f"| {r['export']} | {r['variant']} | {r['concurrency']} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | "
                         f"{r['p99_ms']:.0f} | {r['server_cpu_ms_per_image']} | {p['compute_ms_per_image']} | {p['mean_batch_size']} |")
    if results.get("profile"):
        p = results["profile"]
        lines += ["", f"Stages without HTTP ({p['photos']} photos, mean {p['mean_kb']} kB, {p['mean_pixels']:,} pixels): decode "
                  f"{p['decode_ms']} ms, preprocess {p['preprocess_ms']} ms per photo (one thread).", "",
                  "| export | spinning | batch | ms/batch | ms/image | CPU ms/image | images/s | ms/image with 2 decoders busy |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in p["onnx"]:
            busy = r.get("with_2_decoders", {}).get("ms_per_image", "")
            lines.append(f"| {r['export']} | {r['spinning']} | {r['batch']} | {r['ms_per_batch']} | {r['ms_per_image']} | "
                         f"{r['cpu_ms_per_image']} | {r['images_per_s']} | {busy} |")
    if "targets" in results:
        lines += ["", "```json", json.dumps(results["targets"], indent=1), "```"]
    return "\n".join(lines)


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for checking the benchmark itself")
    parser.add_argument("--model", help="the model to serve (default: the `make demo` run, see prepare_model)")
    parser.add_argument("--export-fp32", help="an existing ONNX export folder (default: export the model with bintally export)")
    parser.add_argument("--export-int8", help="an existing int8 ONNX export folder")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--fresh-exports", action="store_true", help="export again even if /tmp/bintally-bench holds exports "
                                                                     "of this model version")
    parser.add_argument("--photos", type=int, help="how many mirror photos the requests rotate over")
    parser.add_argument("--port", type=int, default=18300)
    parser.add_argument("--seed-mode", choices=["single", "threading"], default="single")
    parser.add_argument("--lit-batch", type=int, default=16, help="LitServe max_batch_size")
    parser.add_argument("--lit-wait", type=float, default=5.0, help="LitServe batch_timeout in ms")
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queue")
    parser.add_argument("--sweep-export", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--check-photos", type=int, default=30)
    parser.add_argument("--only", nargs="*", choices=STAGES)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: benchmarks/results/serving.json)")
    args = parser.parse_args()
    RESULTS = args.out.resolve()
    cfg = dict(QUICK if args.quick else FULL)
    if args.photos:
        cfg["photos"] = args.photos
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")
    install_litserve()
    WORK.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    source = MIRROR if MIRROR.is_dir() else ROOT / "bintally" / "sample" / "bin-images"
    all_photos = sorted(source.glob("*.jpg"))
    step = max(1, len(all_photos) // cfg["photos"])
    photos = all_photos[::step][:cfg["photos"]]  # spread over the mirror
    photos_file = WORK / "photos.txt"
    photos_file.write_text("".join(f"{p}\n" for p in photos))

    results = {"command": " ".join(["benchmarks/serving_benchmark.py", *sys.argv[1:]]), "quick": args.quick,
               "machine": machine(), "load_average_start": load_average(), "settings": cfg | {"threads": THREADS},
               "photos": {"source": str(source), "n": len(photos), "mean_kb": round(sum(p.stat().st_size for p in photos) / len(photos) / 1e3, 1)},
               "matrix": []}
    if args.only and RESULTS.is_file():  # a partial run updates the stages it runs in the results of a full one
        previous = json.loads(RESULTS.read_text())
        reruns = previous.get("partial_reruns", []) + [{"command": results["command"], "date": results["machine"]["date"],
                                                        "load_average_start": results["load_average_start"]}]
        results = previous | {"partial_reruns": reruns}
    partial = bool(args.only) and "model" in results
    model, about = prepare_model(args)
    if not partial:
        results["model"] = {"path": str(model), "about": about}
    exports = {"fp32": export(model, WORK / "export-fp32", None, args.fresh_exports) if not args.export_fp32
               else {"dir": args.export_fp32, **onnx_size(Path(args.export_fp32))}}
    if not args.no_int8:
        exports["int8"] = (export(model, WORK / "export-int8", "int8", args.fresh_exports) if not args.export_int8
                           else {"dir": args.export_int8, **onnx_size(Path(args.export_int8))})
    if not partial:
        results["exports"] = exports
    save(results)
    only = set(args.only or STAGES)
    if "checks" in only:
        run_checks(exports, photos, args, results)
    server_stages = {"matrix": run_matrix, "sweep": run_sweep, "load": run_load, "overload": run_overload,
                     "variants": run_variants, "profile": run_profile}
    for stage, run_stage in server_stages.items():  # in STAGES order
        if stage in only:
            run_stage(cfg, args, exports, photos_file, results)
    results["targets"] = targets(results)
    results["load_average_end"] = load_average()
    results["wall_s"] = round(time.perf_counter() - t_start)
    save(results)
    print(markdown(results))
    log(f"done in {results['wall_s']} s; results in {RESULTS}")


if __name__ == "__main__":
    main()
