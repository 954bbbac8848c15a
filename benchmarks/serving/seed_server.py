"""A seed-style inference server, the baseline `bintally serve` is measured against.

What the project's first inference scripts did: eager PyTorch, a torchvision ResNet50 (random
initial weights here: the compute is the same as a trained one), one photo per request behind the
standard library's `http.server`; PIL decode, the classic torchvision transforms, `model(x)`, JSON
logits back. No batching, no ONNX.

    .venv/bin/python benchmarks/serving/seed_server.py --port 8090 [--threads 2] [--mode single|threading]

`--mode single` (the default) answers one request at a time (`http.server.HTTPServer`);
`--mode threading` uses `ThreadingHTTPServer` (a thread per connection, each calling the model
concurrently, as a plain script would). The listen backlog is raised from socketserver's 5 to
128 so that 32 concurrent clients are queued by the kernel instead of dropped and retried after
1 s (that would make the baseline look worse than it is).
"""

from __future__ import annotations

import argparse
import io
import json
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import torch
import torchvision
from PIL import Image
from torchvision import transforms

TRANSFORM = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["single", "threading"], default="single")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()  # random init: same compute as trained weights
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))  # warm-up

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # health check
            self.reply(200, {"status": "ok"})

        def do_POST(self):
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                image = Image.open(io.BytesIO(data)).convert("RGB")
            except Exception as e:  # noqa: BLE001 - a seed-style script answered any failure this way
                self.reply(400, {"error": str(e)})
                return
            x = TRANSFORM(image).unsqueeze(0)
            with torch.no_grad():
                logits = model(x)[0]
            self.reply(200, {"logits": logits.tolist()})

        def reply(self, status: int, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server_class = ThreadingHTTPServer if args.mode == "threading" else HTTPServer
    server_class.request_queue_size = 128
    server = server_class((args.host, args.port), Handler)
    print(f"seed server ({args.mode}) on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
