"""Random training-time augmentation, driven by the trainer's `torch.Generator`.

Every random draw comes from the generator passed in (never the global RNG), so a run is
reproducible and a resumed run, which restores the generator's state, continues exactly where
it stopped. Draws are made on the generator's device and moved to the batch, so a CPU
generator drives a CUDA batch and gives the same numbers as on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.spec import AugmentSpec

Augment = Callable[[Tensor, torch.Generator], Tensor]


def make_augment(spec: AugmentSpec) -> Augment | None:
    """The augmentation `spec` asks for, or None when none is active (so the trainer may cache
    teacher outputs). Order: random crop, horizontal flip, then Gaussian noise."""
    if not spec.active:
        return None

    def augment(x: Tensor, generator: torch.Generator) -> Tensor:
        if spec.crop_padding > 0:
            x = random_crop(x, spec.crop_padding, generator)
        if spec.hflip:
            x = random_hflip(x, generator)
        if spec.noise_std > 0:
            x = gaussian_noise(x, spec.noise_std, generator)
        return x

    return augment


def _require_images(x: Tensor, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} needs image batches (N, C, H, W); got shape {tuple(x.shape)}")


def random_hflip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image along its last (width) dimension with probability `p`."""
    _require_images(x, "hflip")
    flip = torch.rand(len(x), generator=generator, device=generator.device) < p
    flip = flip.to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad each side by `padding`, then cut each image back to its size at its own random
    offset (a shift of up to `padding` pixels in each direction)."""
    _require_images(x, "crop")
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(
        0, 2 * padding + 1, (2, n), generator=generator, device=generator.device
    ).to(x.device)
    rows = (offsets[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]


def gaussian_noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Add N(0, std²) to every element."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return x + std * noise.to(x.device)
