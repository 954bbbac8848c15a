"""Loading a trained model and counting the items in photos (the same transform as in training)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bintally.data.images import decode_image
from bintally.data.transforms import TransformConfig, build_transform
from bintally.errors import ConfigError, DataError
from bintally.models.model import CountingModel, ModelConfig, describe_probs


@dataclass
class Predictor:
    model: CountingModel
    transform: TransformConfig
    classes: list[str]
    tta: bool = True

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        """From a run directory (its best.pt) or a best.pt file."""
        path = Path(path)
        file = path / "best.pt" if path.is_dir() else path
        if not file.exists():
            raise ConfigError(f"{path}: no trained model (expected {file})")
        saved = torch.load(file, map_location="cpu", weights_only=False)
        model = CountingModel(ModelConfig(**(saved["model_config"] | {"pretrained": False, "weights": None})))
        model.load_state_dict(saved["state_dict"])
        return cls(model.eval(), TransformConfig(**saved["transform"]), saved["classes"],
                   tta=saved.get("train_config", {}).get("tta", True))

    @torch.no_grad()
    def predict_tensor(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = self.model.probs(self.model(x))
        if self.tta:
            probs = (probs + self.model.probs(self.model(torch.flip(x, dims=[-1])))) / 2
        return describe_probs(probs, self.model.decode)

    def predict_paths(self, paths: list[str | Path], batch_size: int = 32) -> list[dict]:
        transform = build_transform(self.transform, train=False)
        results = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = []
            for p in chunk:
                try:
                    images.append(transform(decode_image(p)))
                except FileNotFoundError:
                    raise DataError(p, "no such image") from None
                except OSError as e:
                    raise DataError(p, f"cannot read image ({e})") from None
            out = self.predict_tensor(torch.stack(images))
            for i, p in enumerate(chunk):
                label = int(out["count"][i])
                results.append({"image": str(p), "count": self.classes[label], "label": label,
                                "probability": round(float(out["confidence"][i]), 4),
                                "expected_count": round(float(out["expected_count"][i]), 3),
                                "probs": {c: round(float(v), 4) for c, v in zip(self.classes, out["probs"][i])}})
        return results
