"""Frechet distance between Gaussian fits of image features (FID with a pluggable encoder).

FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}). The trace of the matrix
square root is computed from the eigenvalues of the symmetric PSD matrix
S1^{1/2} S2 S1^{1/2}, which has the same spectrum as S1 S2 (no complex sqrtm).
The encoder is any function images -> (N, D) features, e.g. the Flax CLIP image
features (`t2ijax.eval.clip_score.clip_embedders(clip_folder)[0]`); the Inception-v3 features of the standard FID are
not bundled, so numbers are comparable only under the same encoder.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    root1 = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N - 1) covariance of (N, D) features."""
    feats = np.asarray(features, np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def encode(images, encoder: Callable, batch_size: int = 64) -> np.ndarray:
    """Run `encoder` over `images` (N, H, W, 3) in batches; returns (N, D) float64 features."""
    images = np.asarray(images)
    out = [np.asarray(encoder(images[i:i + batch_size]), np.float64) for i in range(0, len(images), batch_size)]
    return np.concatenate(out).reshape(len(images), -1)


def fid(images_a, images_b, encoder: Callable, batch_size: int = 64) -> float:
    """Frechet distance between the `encoder` features of two image sets."""
    return frechet_distance(*feature_statistics(encode(images_a, encoder, batch_size)),
                            *feature_statistics(encode(images_b, encoder, batch_size)))
