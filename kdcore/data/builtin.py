"""Built-in data sets: scikit-learn's digits, and seeded synthetic data of any shape.

Both need no download, so a job, a test or a demo can run anywhere, offline.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kdcore.data.raw import RawData
from kdcore.spec import SyntheticSpec

MAX_LATENT = 8  # classes live in at most this many latent dimensions
INPUT_NOISE = 0.5  # share of `noise` added per input element, off the class subspace too


def digits() -> RawData:
    """1797 8x8 grey images of the digits 0-9, shaped (1, 8, 8) and scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return RawData(x, y.astype(np.int64), None, None, name="digits", num_classes=10)


def synthetic(spec: SyntheticSpec) -> RawData:
    """Class-conditional Gaussian data, identical for the same spec (seed included).

    Each class has a mean drawn from N(0, I) in a latent space of min(classes, 8) dimensions;
    a row is its class mean plus N(0, noise²) latent noise, projected to the input through a
    fixed orthogonal basis, plus N(0, (noise/2)²) noise on every input element. Difficulty
    therefore depends on `noise` and the number of classes but not on the input size: at
    noise=1 a linear model reaches roughly 55-85 % (4-10 classes; 30 % with 100), at noise=0
    the classes are separable. The classes are Gaussians with a shared covariance, so the best
    possible classifier is linear: this set checks that learning works, not capacity gaps.
    For (C, L) and (C, H, W) inputs the basis is smooth along L / H, W, so that the signal has
    the local structure convolutions expect.
    """
    shape = tuple(spec.input_shape)
    dim = math.prod(shape)
    latent = min(max(2, spec.num_classes), MAX_LATENT, dim)
    rng = np.random.default_rng(spec.seed)
    means = rng.standard_normal((spec.num_classes, latent))
    basis = _basis(rng, latent, shape)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % spec.num_classes)  # balanced classes
        z = means[y] + spec.noise * rng.standard_normal((n, latent))
        x = z @ basis + spec.noise * INPUT_NOISE * rng.standard_normal((n, dim))
        return x.astype(np.float32).reshape(n, *shape), y.astype(np.int64)

    x_train, y_train = draw(spec.n_train)
    x_val, y_val = draw(spec.n_val)
    return RawData(x_train, y_train, x_val, y_val, name="synthetic", num_classes=spec.num_classes)


def _basis(rng: np.random.Generator, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """(k, prod(shape)) orthogonal rows, each element of unit mean square, so that inputs have
    roughly unit variance whatever their size."""
    if len(shape) == 1:
        b = rng.standard_normal((k, shape[0]))
    else:
        # Random patterns at a quarter of the resolution, interpolated up: smooth in space.
        coarse = rng.standard_normal((k, shape[0], *(max(1, -(-s // 4)) for s in shape[1:])))
        mode = "linear" if len(shape) == 2 else "bilinear"
        up = F.interpolate(torch.from_numpy(coarse), size=shape[1:], mode=mode, align_corners=False)
        b = up.numpy()
    dim = math.prod(shape)
    q, _ = np.linalg.qr(b.reshape(k, dim).T)  # (dim, k), orthonormal columns
    return q.T * math.sqrt(dim / k)
