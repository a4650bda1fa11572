"""Arrays as a source hands them over, before splitting, label masking and normalisation.

Sources only read; `kdcore.data.sources.prepare` does the rest the same way for all of them.
The checks here turn whatever a user file holds into clean float32 features and int64 labels,
or a `DataError` that says which array is wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdcore.data.dataset import DataError
from kdcore.limits import MAX_CLASSES  # a label above it is more likely an id column than a class

UNLABELED = -1
LABEL_FIX = "store labels as integer class indices 0..K-1 (-1 for an unlabeled row)"


@dataclass
class RawData:
    """`y_train` None means no labels at all; `x_val` None means "split x_train"."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    name: str
    num_classes: int | None = None  # known up front for built-in sets
    field: str = "data.source"  # spec field to blame for label problems
    label_fix: str = LABEL_FIX


def check_features(x: np.ndarray, what: str, field: str = "data.source") -> np.ndarray:
    """Numeric, finite, (N, *shape) with 1-3 dims per row; returned as float32."""
    if x.dtype == np.bool_:
        x = x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.integer) and not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            field, f"{what} has dtype {x.dtype}; features must be numbers (float or int arrays)"
        )
    if not 2 <= x.ndim <= 4:
        raise DataError(
            field,
            f"{what} has shape {tuple(x.shape)}; expected (N, features), "
            "(N, C, L) or (N, C, H, W) with one row per example",
        )
    if x.shape[0] == 0 or x.size == 0:
        raise DataError(field, f"{what} is empty (shape {tuple(x.shape)}); give at least one row")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(
            field,
            f"{what} holds {int(bad.sum())} NaN/inf value(s) (first in row "
            f"{row}); drop or impute those rows before uploading",
        )
    return x


def check_labels(
    y: np.ndarray, what: str, n: int, *, allow_unlabeled: bool, field: str, fix: str
) -> np.ndarray:
    """Integer class indices, one per row; -1 (unlabeled) only where allowed. Returns int64."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            field,
            f"{what} has shape {tuple(y.shape)}; labels are one integer "
            "class index per row, shape (N,) (not one-hot)",
        )
    if len(y) != n:
        raise DataError(
            field,
            f"{what} has {len(y)} labels but the features have {n} rows; "
            "give exactly one label per row",
        )
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        nonint = ~np.isfinite(y) | (y != np.trunc(y))
        if nonint.any():
            bad = float(y[nonint][0])
            raise DataError(field, f"{what} holds non-integer labels (e.g. {bad}); {fix}")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(field, f"{what} has dtype {y.dtype}; {fix}")
    y = y.astype(np.int64)
    low = UNLABELED if allow_unlabeled else 0
    if (y < low).any():
        bad = int(y[y < low][0])
        if bad == UNLABELED:
            raise DataError(
                field,
                f"{what} holds -1 (unlabeled) entries, but validation rows "
                "must all be labelled: accuracy is measured on them",
            )
        raise DataError(field, f"{what} holds the label {bad}; {fix}")
    if (y >= MAX_CLASSES).any():
        raise DataError(
            field,
            f"{what} holds the label {int(y.max())}, which would mean "
            f"over {MAX_CLASSES} classes; {fix}",
        )
    return y
