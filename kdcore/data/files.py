"""Data from user files: `.npz` and `.pt` tensor archives, and CSV tables.

Uploads are untrusted: `.npz` is read with `allow_pickle=False` and `.pt` with
`torch.load(..., weights_only=True)`, so a file carrying a pickled object fails to load
instead of running code.
"""

from __future__ import annotations

import csv
import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from kdcore.data.dataset import DataError
from kdcore.data.raw import LABEL_FIX, RawData, check_features, check_labels
from kdcore.limits import MAX_DATA_ELEMENTS

KEYS = ("x_train", "y_train", "x_val", "y_val")
ARCHIVE_FIX = "save a dict of arrays with keys x_train, y_train (optional), x_val, y_val"


def load_npz(path: Path) -> RawData:
    """Arrays `x_train`, optional `y_train`, `x_val`, `y_val` from a NumPy archive."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            "data.source",
            f"{path} is not a readable .npz archive ({exc}); "
            f"write it with numpy.savez: {ARCHIVE_FIX}",
        ) from None
    if not hasattr(archive, "files"):  # a bare .npy saved under an .npz name
        raise DataError(
            "data.source",
            f"{path} holds a single array, not an archive; "
            f"write it with numpy.savez: {ARCHIVE_FIX}",
        )
    with archive:
        arrays: dict[str, np.ndarray] = {}
        for key in archive.files:
            _check_elements(archive, key, path)
            try:
                arrays[key] = archive[key]
            except ValueError:  # object arrays need pickle, which we refuse
                raise DataError(
                    "data.source",
                    f"{path}: array {key!r} holds Python objects "
                    "(it needs pickle, which is refused for safety); "
                    "store numeric arrays only",
                ) from None
    return from_arrays(arrays, path)


def _check_elements(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> None:
    """Refuse an array too large to hold, from its header, before reading it: a compressed
    archive of a few megabytes can otherwise expand to terabytes in the worker's memory."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if archive.zip is None:  # closed: reading the array reports it
        return
    try:
        with archive.zip.open(f"{key}.npy") as f:
            reader = readers.get(np.lib.format.read_magic(f))
            if reader is None:  # a header version without a public reader: read it as usual
                return
            shape = reader(f)[0]
    except (KeyError, OSError, ValueError, EOFError, zipfile.BadZipFile):
        return  # reading the array itself reports what is wrong
    elements = math.prod(shape)
    if elements > MAX_DATA_ELEMENTS:
        raise DataError(
            "data.source",
            f"{path}: array {key!r} has shape {tuple(shape)}, {elements:,} elements, above the "
            f"limit of {MAX_DATA_ELEMENTS:,}; use less data or smaller rows",
        )


def load_pt(path: Path) -> RawData:
    """A dict of tensors saved with `torch.save`, read with `weights_only=True` only."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            "data.source",
            f"{path} contains pickled Python objects, which are "
            "never loaded (weights_only=True); save plain tensors: "
            f"torch.save({{'x_train': ..., ...}}); {ARCHIVE_FIX}",
        ) from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise DataError(
            "data.source",
            f"{path} is not a readable torch file ({type(exc).__name__}: {exc}); {ARCHIVE_FIX}",
        ) from None
    if not isinstance(obj, Mapping):
        raise DataError(
            "data.source",
            f"{path} holds a {type(obj).__name__}, not a dict of tensors; {ARCHIVE_FIX}",
        )
    arrays: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise DataError(
                "data.source",
                f"{path}: {key!r} is a {type(value).__name__}, not a tensor; {ARCHIVE_FIX}",
            )
        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()  # half / bfloat16 have no NumPy counterpart
        arrays[str(key)] = t.numpy()
    return from_arrays(arrays, path)


def from_arrays(arrays: Mapping[str, np.ndarray], path: Path) -> RawData:
    """Check the keys and contents of an archive and build `RawData` from them."""
    unknown = sorted(set(arrays) - set(KEYS))
    if unknown:
        raise DataError(
            "data.source",
            f"{path}: unknown key(s) {unknown}; the keys are "
            f"{', '.join(KEYS)} (rename or remove the others)",
        )
    if "x_train" not in arrays:
        raise DataError(
            "data.source",
            f"{path} has no 'x_train' (found: {sorted(arrays) or 'nothing'}); {ARCHIVE_FIX}",
        )
    if "y_val" in arrays and "x_val" not in arrays:
        raise DataError(
            "data.source",
            f"{path} has 'y_val' but no 'x_val'; add the validation "
            "features or remove y_val to split x_train instead",
        )
    x_train = check_features(arrays["x_train"], f"{path.name}: x_train")
    y_train = arrays.get("y_train")
    if y_train is not None:
        y_train = check_labels(
            y_train,
            f"{path.name}: y_train",
            len(x_train),
            allow_unlabeled=True,
            field="data.source",
            fix=LABEL_FIX,
        )
    x_val = y_val = None
    if "x_val" in arrays:
        x_val = check_features(arrays["x_val"], f"{path.name}: x_val")
        if "y_val" not in arrays:
            raise DataError(
                "data.source",
                f"{path} has 'x_val' but no 'y_val': accuracy needs "
                "a labelled validation split; add y_val (one class "
                "index per row of x_val)",
            )
        y_val = check_labels(
            arrays["y_val"],
            f"{path.name}: y_val",
            len(x_val),
            allow_unlabeled=False,
            field="data.source",
            fix=LABEL_FIX,
        )
    return RawData(x_train, y_train, x_val, y_val, name=path.stem)


def load_csv(path: Path, label_column: str) -> RawData:
    """A table with a header row: every column a numeric feature except `label_column`.

    An empty label cell, or -1, marks an unlabeled row. Validation rows are split off the
    labelled rows (`data.val_fraction`).
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError("data.source", f"{path} is not a readable UTF-8 CSV file ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(
            "data.source", f"{path} is empty; give a header row, then one row per example"
        )
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(
            "data.label_column",
            f"column {label_column!r} is not in the header of "
            f"{path.name} ({', '.join(header)}); set "
            "data.label_column to the column holding labels",
        )
    label_at = header.index(label_column)
    features = [i for i in range(len(header)) if i != label_at]
    if not features:
        raise DataError("data.source", f"{path} has no feature columns besides {label_column!r}")
    if len(rows) < 2:
        raise DataError("data.source", f"{path} has a header but no data rows")
    x = np.empty((len(rows) - 1, len(features)), dtype=np.float64)
    y = np.empty(len(rows) - 1, dtype=np.float64)
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DataError(
                "data.source",
                f"{path}: data row {r + 1} has {len(row)} cells but "
                f"the header has {len(header)}; fix that row",
            )
        for j, col in enumerate(features):
            try:
                x[r, j] = float(row[col])
            except ValueError:
                raise DataError(
                    "data.source",
                    f"{path}: data row {r + 1}, column "
                    f"{header[col]!r}: {row[col]!r} is not a number; "
                    "every column except the label must be numeric",
                ) from None
        cell = row[label_at].strip()
        try:
            y[r] = float(cell) if cell else -1
        except ValueError:
            raise DataError(
                "data.label_column",
                f"{path}: data row {r + 1}: label {cell!r} is "
                "not an integer; map class names to 0..K-1 "
                "(leave the cell empty for an unlabeled row)",
            ) from None
    fix = "labels must be integer class indices 0..K-1 (empty or -1 for an unlabeled row)"
    x_train = check_features(x, f"{path.name}: feature columns")
    y_train = check_labels(
        y,
        f"{path.name}: column {label_column!r}",
        len(x),
        allow_unlabeled=True,
        field="data.label_column",
        fix=fix,
    )
    return RawData(
        x_train, y_train, None, None, name=path.stem, field="data.label_column", label_fix=fix
    )
