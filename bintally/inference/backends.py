"""Backends turn a batch of pre-processed photos [N, 3, H, W] into probabilities [N, n_classes].

`TorchBackend` runs `ProbabilityModel` (eager PyTorch, CPU or GPU); `OnnxBackend` runs the same
module exported to ONNX with ONNX Runtime, and never imports torch.
"""

from __future__ import annotations

import numpy as np

from bintally.errors import DataError
from bintally.models.artifact import ModelArtifact, load_model


class TorchBackend:
    name = "torch"

    def __init__(self, artifact: ModelArtifact, device: str = "cpu", threads: int | None = None):
        import torch

        from bintally.models.model import ProbabilityModel

        self.torch, self.device, self.threads = torch, torch.device(device), threads
        self.net = ProbabilityModel(load_model(artifact), artifact.tta).eval().to(self.device)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        previous = torch.get_num_threads()
        if self.threads:  # for this call only: a backend inside a bigger program (tests, notebooks) leaves its setting alone
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return self.net(torch.from_numpy(images).to(self.device)).float().cpu().numpy()
        finally:
            torch.set_num_threads(previous)


class OnnxBackend:
    name = "onnx"

    def __init__(self, artifact: ModelArtifact, threads: int | None = None, model_file=None):
        source = model_file or artifact.weights_file
        try:
            self.session = onnx_session(source, threads)
        except Exception as e:  # onnxruntime raises its own exception types for a damaged or foreign file
            raise DataError(source, f"not a loadable ONNX model ({' '.join(str(e).split())[:200]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or outputs[0].shape[-1] != artifact.labels.n_classes:
            raise DataError(source, f"not a bintally ONNX model: expected one input of photos and one output of "
                                    f"{artifact.labels.n_classes} probabilities")
        self.input, self.output = inputs[0].name, outputs[0].name

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: np.ascontiguousarray(images, dtype=np.float32)})[0]


def onnx_session(model_file, threads: int | None = None):
    """An ONNX Runtime CPU session: `threads` intra-op threads (default: the runtime's), one inter-op thread, warnings only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
