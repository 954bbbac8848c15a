"""`ModelSignature`: the tensors a served model takes and gives, read by both metadata endpoints (REST and OIP v2)."""

from __future__ import annotations

from dataclasses import dataclass

from bintally.inference.prediction import OUTPUTS
from bintally.labels import LabelSpace

IMAGE_INPUT, ARRAY_INPUT = "image", "images"  # encoded photos (BYTES [N]); pre-processed photos (FP32 [N, 3, S, S])


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSignature:
    classes: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, space: LabelSpace, image_size: int) -> "ModelSignature":
        inputs = (TensorSpec(IMAGE_INPUT, "BYTES", (-1,)), TensorSpec(ARRAY_INPUT, "FP32", (-1, 3, image_size, image_size)))
        outputs = tuple(TensorSpec(name, datatype, (-1, space.n_classes) if name == "probabilities" else (-1,))
                        for name, datatype in OUTPUTS.items())
        return cls(tuple(space.names), inputs, outputs)

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)
