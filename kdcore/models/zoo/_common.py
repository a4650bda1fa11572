"""Shared shape checks for the zoo: every factory derives its layers from the data's shape."""

from __future__ import annotations

from collections.abc import Sequence


def check_classes(arch: str, num_classes: int) -> None:
    """Fail at build time, not at the first forward, on a nonsensical head size."""
    if int(num_classes) < 1:
        raise ValueError(f"{arch}: num_classes must be at least 1, got {num_classes}")


def image_shape(arch: str, input_shape: Sequence[int]) -> tuple[int, int, int, bool]:
    """(C, H, W, add_channel) for an image model; (H, W) data is read as one channel."""
    shape = tuple(int(d) for d in input_shape)
    if any(d < 1 for d in shape):
        raise ValueError(f"{arch}: input_shape {shape} has a non-positive dimension")
    if len(shape) == 3:
        return shape[0], shape[1], shape[2], False
    if len(shape) == 2:
        return 1, shape[0], shape[1], True
    raise ValueError(
        f"{arch}: expects images shaped (C, H, W) or (H, W), got input_shape {shape}; "
        "use 'mlp' or 'conv1d' for flat features"
    )


def sequence_shape(arch: str, input_shape: Sequence[int]) -> tuple[int, int, bool]:
    """(C, L, add_channel) for a 1-D model; (L,) data is read as one channel."""
    shape = tuple(int(d) for d in input_shape)
    if any(d < 1 for d in shape):
        raise ValueError(f"{arch}: input_shape {shape} has a non-positive dimension")
    if len(shape) == 2:
        return shape[0], shape[1], False
    if len(shape) == 1:
        return 1, shape[0], True
    raise ValueError(
        f"{arch}: expects sequences shaped (L,) or (C, L), got input_shape {shape}; "
        "use 'convnet' or a ResNet for images"
    )


def int_list(arch: str, name: str, value: Sequence[int], allow_empty: bool = False) -> list[int]:
    """Validate a list-of-widths kwarg (it arrives from a user's JSON/YAML spec)."""
    if isinstance(value, (int, str)) or not isinstance(value, Sequence):
        raise ValueError(f"{arch}: {name} must be a list of positive integers, got {value!r}")
    out = [int(v) for v in value]
    if any(v < 1 for v in out) or (not out and not allow_empty):
        raise ValueError(f"{arch}: {name} must be a list of positive integers, got {value!r}")
    return out
