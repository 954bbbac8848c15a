"""The framework baseline: LitServe serving the same ONNX export as `bintally serve`, with LitServe's own batching.

LitServe is installed only for this benchmark, outside the project's environment:

    .venv/bin/python -m pip install --no-deps --target /tmp/bintally-bench-env litserve pyzmq
    PYTHONPATH=/tmp/bintally-bench-env .venv/bin/python benchmarks/serving/litserve_server.py \
        --model EXPORT_DIR --port 8091 --max-batch-size 16 --batch-timeout-ms 5 --threads 2

Each request is multipart/form-data with the photo as the part "file" (LitServe parses JSON or forms,
not raw image bodies). The work per photo is the same as in `bintally serve`: `decode_image`,
`preprocess` (bintally's own functions), one ONNX Runtime session run per batch (intra-op threads as
given, inter-op 1), and the same result shape (`Prediction.rows`). LitServe runs its HTTP server
(uvicorn + FastAPI) and its inference worker (decode, batch, predict, encode) in separate processes.
"""

from __future__ import annotations

import argparse

import litserve as ls
import numpy as np


class CountAPI(ls.LitAPI):
    def __init__(self, model: str, threads: int, **kwargs):
        super().__init__(**kwargs)
        self.model_dir, self.threads = model, threads

    def setup(self, device):
        import onnxruntime as ort

        from bintally.models.artifact import read_artifact

        self.artifact = read_artifact(self.model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.artifact.weights_file), options, providers=["CPUExecutionProvider"])
        self.input, self.output = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name
        self.labels = self.artifact.labels
        size = self.artifact.transform.image_size
        self.session.run([self.output], {self.input: np.zeros((2, 3, size, size), np.float32)})  # warm-up

    def decode_request(self, request):
        from bintally.data.images import decode_image
        from bintally.data.transforms import preprocess

        upload = request["file"]
        data = upload.file.read() if hasattr(upload, "file") else upload
        return preprocess(decode_image(data, name="the image"), self.artifact.transform)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.session.run([self.output], {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probs):
        from bintally.inference.prediction import Prediction

        return {"results": Prediction.of(self.labels, np.asarray(probs)[None]).rows()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="an ONNX export folder (model.json + model.onnx)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queue instead of multiprocessing queues")
    args = parser.parse_args()

    api = CountAPI(args.model, args.threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout_ms / 1000,
                   api_path="/predict")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60, fast_queue=args.fast_queue)
    server.run(host=args.host, port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
