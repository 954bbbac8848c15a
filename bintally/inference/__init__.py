"""The inference core: one path from a model artifact and photos to counts, shared by evaluate, predict, export and serve.

    photo (path or bytes) --decode_image--> RGB --preprocess--> float32 [3, H, W]
        --backend (PyTorch ProbabilityModel, or its ONNX export)--> probabilities --Prediction--> rows, tensors, frames, scores
"""

from bintally.inference.counter import Counter
from bintally.inference.prediction import Prediction
from bintally.inference.signature import ModelSignature

__all__ = ["Counter", "ModelSignature", "Prediction"]
