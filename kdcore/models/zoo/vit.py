"""A small Vision Transformer ("vit_tiny") for low-resolution images.

Attention is written out with separate `q`, `k`, `v` and `proj` nn.Linear layers instead of
nn.MultiheadAttention, because a later feature reparameterises exactly those layers (and hooks
them by name); the batch dimension is never hard-coded, so trace/export stay batch-dynamic.
"""

from __future__ import annotations

import torch
from torch import nn

from kdcore.models.registry import register
from kdcore.models.zoo._common import check_classes, image_shape


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(d)) v, then `proj`."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"vit_tiny: dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        # (B, N, D) → (B, heads, N, head_dim) without naming B or N.
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).flatten(2)
        return self.proj(out)


class Mlp(nn.Module):
    """fc1 → GELU → fc2, the transformer's position-wise feed-forward layer."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, max(1, round(dim * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens (B, N, dim) with a strided convolution."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ClsPool(nn.Module):
    """Pick the class token: (B, 1 + N, D) → (B, D), the embedding fed to `head`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class VisionTransformer(nn.Module):
    """[unsqueeze] → patch_embed → cls_token + pos_embed → blocks → norm → pool → head."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        patch_size: int | None = None,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        arch: str = "vit_tiny",
    ):
        super().__init__()
        c, h, w, self.add_channel = image_shape(arch, input_shape)
        if patch_size is None:
            patch_size = next(p for p in (4, 2, 1) if h % p == 0 and w % p == 0)
        patch_size = int(patch_size)
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise ValueError(f"{arch}: patch_size {patch_size} must divide the image size {h}x{w}")
        if min(dim, depth, heads) < 1 or mlp_ratio <= 0:
            raise ValueError(f"{arch}: dim, depth, heads and mlp_ratio must be positive")
        num_patches = (h // patch_size) * (w // patch_size)
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(c, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pool = ClsPool()
        self.head = nn.Linear(dim, num_classes)
        self.feature_dim = dim
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:  # a Python bool fixed at build time: trace/export friendly
            x = x.unsqueeze(1)
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(self.pool(x))


@register("vit_tiny")
def vit_tiny(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    patch_size: int | None = None,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
) -> nn.Module:
    check_classes("vit_tiny", num_classes)
    return VisionTransformer(
        input_shape, num_classes, patch_size, int(dim), int(depth), int(heads), float(mlp_ratio)
    )
