"""Sample-quality metrics on classifier features and class probabilities: plain functions of arrays.

FID and KID compare feature distributions; the Inception Score and the class statistics read the class
probabilities; precision and recall (Kynkaanniemi et al. 2019) compare k-NN manifolds. All in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N x D each)."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * _trace_sqrt_product(cov_r, cov_f))


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr sqrt(a b) for covariance matrices, computed as tr sqrt(a^1/2 b a^1/2): a symmetric PSD matrix, so its
    eigenvalues are real and exact even where a b is singular (where sqrtm of a b goes complex)."""
    w, v = np.linalg.eigh(a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ b @ root_a), 0, None)).sum())


def kid(real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int = 50, seed: int = 0) -> float:
    """Kernel Inception Distance: the unbiased MMD^2 with the cubic polynomial kernel, mean over random subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(real), len(fake))
    dim = real.shape[1]
    estimates = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates.append(off_diagonal - 2 * k_xy.mean())
    return float(np.mean(estimates))


def inception_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): K for confident predictions spread evenly over K classes, 1 at worst."""
    marginal = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12))).sum(1)
    return float(np.exp(kl.mean()))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the share of fake samples inside the real
    k-NN manifold, and of real samples inside the fake one."""
    real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)
    real_radii, fake_radii = _knn_radius(real_t, k), _knn_radius(fake_t, k)
    precision = _inside(fake_t, real_t, real_radii).mean()
    recall = _inside(real_t, fake_t, fake_radii).mean()
    return float(precision), float(recall)


@dataclass(frozen=True)
class Coverage:
    """The histogram of predicted classes (digits, for MNIST) and what it says about mode collapse."""

    histogram: list[float]  # share of samples predicted as each class
    digits_covered: int  # classes with at least `min_share` of the samples (the name is MNIST's)
    class_kl: float  # KL(histogram || uniform): 0 when even, log K (2.3 for 10) for a single class
    confidence: float  # mean top-1 probability


def class_coverage(probs: np.ndarray, min_share: float | None = None) -> Coverage:
    """`min_share` defaults to half an even share: 0.05 for ten classes."""
    n_classes = probs.shape[1]
    min_share = 0.5 / n_classes if min_share is None else min_share
    histogram = np.bincount(probs.argmax(1), minlength=n_classes) / len(probs)
    nonzero = histogram[histogram > 0]
    return Coverage(
        histogram=histogram.tolist(),
        digits_covered=int((histogram >= min_share).sum()),
        class_kl=float((nonzero * np.log(nonzero * n_classes)).sum()),
        confidence=float(probs.max(1).mean()),
    )


def _knn_radius(points: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = [torch.cdist(part, points).kthvalue(k + 1, dim=1).values for part in points.split(chunk)]
    return torch.cat(radii)


def _inside(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> np.ndarray:
    """For each query, whether it lies within some point's k-NN ball."""
    hits = [(torch.cdist(part, points) <= radii).any(dim=1) for part in queries.split(chunk)]
    return torch.cat(hits).double().numpy()
