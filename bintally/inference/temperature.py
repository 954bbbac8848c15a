"""Probabilities at a temperature: the one calibration step every backend's output passes (numpy only)."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities [N, C] at temperature T: p_T ∝ p^(1/T) (T > 1 softens, T < 1 sharpens); T = 1 returns them unchanged."""
    probs = np.asarray(probs)
    if temperature == 1.0 or not len(probs):
        return probs
    logits = np.log(np.clip(probs.astype(np.float64), EPS, None)) / temperature
    logits -= logits.max(-1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(-1, keepdims=True)).astype(probs.dtype)
