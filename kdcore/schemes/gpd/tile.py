"""Weight tiling of gpd.md §1's table: how one student tensor becomes r×r (or r) DT blocks."""

from __future__ import annotations

import torch


def _noisy(t: torch.Tensor, noise: float, generator: torch.Generator | None) -> torch.Tensor:
    """One replica (+ε, ε ~ N(0, noise²)): the reference adds fresh noise at every replication."""
    if noise <= 0:
        return t.clone()
    eps = torch.randn(t.shape, generator=generator, dtype=t.dtype, device="cpu").to(t.device)
    return t + noise * eps


def tile_weight(
    w: torch.Tensor,
    ratio: int,
    in_wide: bool,
    out_wide: bool,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dense/conv weight (out, in, *k): each block W/r when the output is widened, else W.

    gpd.md §1: widened in and out → every r×r block W/r; first layer (in not widened) → output
    blocks W/r; last layer (out not widened) → input blocks W, unscaled. With the DT state
    (1/r)·[h; …; h] every output replica is then W·h/r (or W·h for the last layer).
    """
    base = w / ratio if out_wide else w
    ro, ri = (ratio if out_wide else 1), (ratio if in_wide else 1)
    rows = [
        torch.cat([_noisy(base, noise, generator) for _ in range(ri)], dim=1) for _ in range(ro)
    ]
    return torch.cat(rows, dim=0)


def tile_bias(
    b: torch.Tensor,
    ratio: int,
    out_wide: bool,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dense/conv bias: b/r replicated r times when the output is widened, else b (gpd.md §1)."""
    if not out_wide:
        return b.clone()
    return torch.cat([_noisy(b / ratio, noise, generator) for _ in range(ratio)])


def replicate(
    t: torch.Tensor, ratio: int, noise: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-channel vector replicated unscaled (BN γ/β with noise, running stats with noise 0)."""
    return torch.cat([_noisy(t, noise, generator) for _ in range(ratio)])


def tile_along(
    t: torch.Tensor,
    ratio: int,
    axis: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A tensor added to (or concatenated with) widened activations, e.g. a ViT's cls_token and
    pos_embed: t/r replicated r times along its channel `axis` (+ε), the DT state's convention."""
    return torch.cat([_noisy(t / ratio, noise, generator) for _ in range(ratio)], dim=axis)
