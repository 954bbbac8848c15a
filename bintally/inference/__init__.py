"""The inference core: one path from a model artifact and photos to counts, shared by evaluate, predict, export and serve.

    photo (path or bytes) --decode_image--> RGB --preprocess--> float32 [3, H, W]
        --backend (PyTorch ProbabilityModel, or its ONNX export)--> probabilities --LabelSpace.describe--> results
"""

from bintally.inference.counter import Counter

__all__ = ["Counter"]
