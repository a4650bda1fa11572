"""`load_data`: one entry point from a `DataSpec` to a ready `Dataset`.

Every source is read into `RawData`, then `prepare` does the same steps for all of them:
split off validation rows (when the source has none), mask labels down to
`labeled_fraction`, standardise with training statistics. Splits are stratified and seeded
with `data.seed`, so a job run twice sees the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kdcore.data import builtin, files
from kdcore.data.dataset import DataError, Dataset
from kdcore.data.raw import UNLABELED, RawData
from kdcore.spec import AugmentSpec, DataSpec

BUILTIN = ("digits", "synthetic")
FILE_TYPES = (".npz", ".pt", ".pth", ".csv")
STD_FLOOR = 1e-8  # a channel with less spread than this is constant: leave its scale alone


def load_data(spec: DataSpec) -> Dataset:
    """Read `spec.source` and return train/val tensors; raise `DataError` for bad data."""
    data = prepare(read_source(spec), spec)
    check_augment(spec.augment, data.input_shape)
    return data


def read_source(spec: DataSpec) -> RawData:
    """Dispatch on the source: a built-in name, or a file path by its extension."""
    source = spec.source.strip()
    if source == "digits":
        return builtin.digits()
    if source == "synthetic":
        return builtin.synthetic(spec.synthetic)
    path = Path(source).expanduser()
    loaders: dict[str, Callable[[Path], RawData]] = {
        ".npz": files.load_npz,
        ".pt": files.load_pt,
        ".pth": files.load_pt,
        ".csv": lambda p: files.load_csv(p, spec.label_column),
    }
    loader = loaders.get(path.suffix.lower())
    if loader is None:
        raise DataError(
            "data.source",
            f"{source!r} is neither a built-in set "
            f"({', '.join(BUILTIN)}) nor a file of a known type "
            f"({', '.join(FILE_TYPES)}); give one of those",
        )
    if not path.is_file():
        raise DataError(
            "data.source",
            f"file not found: {path}; check the path (a relative "
            "path resolves from the spec file's folder)",
        )
    return loader(path)


def prepare(raw: RawData, spec: DataSpec) -> Dataset:
    """Split, mask and normalise `raw` as `spec` says; the same for every source."""
    x_train, x_val, y_val = raw.x_train, raw.x_val, raw.y_val
    n = len(x_train)
    y_train = raw.y_train if raw.y_train is not None else np.full(n, UNLABELED, np.int64)
    input_shape = tuple(int(s) for s in x_train.shape[1:])

    if x_val is None or y_val is None:
        x_train, y_train, x_val, y_val = _split_val(x_train, y_train, raw, spec)
    elif tuple(x_val.shape[1:]) != input_shape:
        raise DataError(
            "data.source",
            f"{raw.name}: x_val rows have shape "
            f"{tuple(x_val.shape[1:])} but x_train rows have "
            f"{input_shape}; both splits need the same row shape",
        )

    num_classes = raw.num_classes or int(max(y_train.max(initial=-1), y_val.max())) + 1
    if num_classes < 2:
        raise DataError(
            raw.field,
            f"{raw.name}: every label is 0, so there is one class; "
            "classification needs at least two",
        )

    y_train_all = None
    if spec.labeled_fraction < 1:
        y_train_all = y_train
        y_train = _mask_labels(y_train, spec.labeled_fraction, spec.seed)

    normalization = None
    if spec.normalize:
        x_train, x_val, normalization = _standardise(x_train, x_val)

    return Dataset(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_val=torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32)),
        y_val=torch.from_numpy(np.ascontiguousarray(y_val, dtype=np.int64)),
        num_classes=num_classes,
        input_shape=input_shape,
        normalization=normalization,
        name=raw.name,
        y_train_all=None
        if y_train_all is None
        else torch.from_numpy(np.ascontiguousarray(y_train_all, dtype=np.int64)),
    )


def check_augment(spec: AugmentSpec, input_shape: tuple[int, ...]) -> None:
    """Flips and crops only make sense for images: refuse them up front, not mid-training."""
    if len(input_shape) == 3:
        return
    for field, on in (("hflip", spec.hflip), ("crop_padding", spec.crop_padding > 0)):
        if on:
            raise DataError(
                f"data.augment.{field}",
                f"{field} applies to images (C, H, W) only "
                f"but rows here have shape {input_shape}; "
                "turn it off (noise_std works on any data)",
            )


def stratified_pick(labels: np.ndarray, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of `n_pick` entries of `labels`, each class taking its share (largest
    remainder, ties broken at random), rows within a class at random; sorted."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = n_pick * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))
    take[order[: n_pick - int(take.sum())]] += 1
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def _split_val(
    x: np.ndarray, y: np.ndarray, raw: RawData, spec: DataSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Move `val_fraction` of the labelled rows to validation; unlabeled rows stay in train."""
    labeled = np.flatnonzero(y >= 0)
    if len(labeled) == 0:
        raise DataError(
            raw.field,
            f"{raw.name} has no labels, and accuracy needs a labelled "
            "validation split: give x_val and y_val (or label some rows "
            "so that validation can be split off them)",
        )
    n_val = max(1, round(spec.val_fraction * len(labeled)))
    if n_val >= len(x):
        raise DataError(
            "data.val_fraction",
            f"{raw.name} has {len(x)} rows, too few to keep "
            f"any for training after a {spec.val_fraction} "
            "validation split; add rows or give x_val/y_val",
        )
    rng = np.random.default_rng([spec.seed, 0])
    val = labeled[stratified_pick(y[labeled], n_val, rng)]
    train = np.setdiff1d(np.arange(len(x)), val, assume_unique=True)
    return x[train], y[train], x[val], y[val]


def _mask_labels(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Keep the labels of a stratified `fraction` of labelled rows; the rest become -1."""
    labeled = np.flatnonzero(y >= 0)
    if len(labeled) == 0:
        return y
    n_keep = max(1, round(fraction * len(labeled)))
    keep = labeled[stratified_pick(y[labeled], n_keep, np.random.default_rng([seed, 1]))]
    out = np.full_like(y, UNLABELED)
    out[keep] = y[keep]
    return out


def _standardise(
    x_train: np.ndarray, x_val: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, list[float]]]:
    """Per channel for (N, C, ...) data, per feature for (N, F); training statistics only, so
    nothing about validation leaks into the model."""
    axes = (0, *range(2, x_train.ndim))
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = x_train.std(axis=axes, dtype=np.float64)
    std = np.where(std < STD_FLOOR, 1.0, std)
    shape = (1, -1) + (1,) * (x_train.ndim - 2)
    m, s = mean.reshape(shape), std.reshape(shape)
    stats = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return (x_train - m) / s, (x_val - m) / s, stats
