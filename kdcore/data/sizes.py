"""What the spec alone says about a data source's size, checked before anything is generated
or read: a row's shape and the class count (known for the built-in sets, so the models can be
estimated at submit; a file's only once the worker has read it), and whether the synthetic set
would be too large to generate. The bounds are kdcore/limits.py's."""

from __future__ import annotations

import math

from kdcore.limits import MAX_INPUT_ELEMENTS, MAX_SYNTHETIC_ELEMENTS
from kdcore.spec import DataSpec

#: what `builtin.digits()` returns (a test checks they agree)
DIGITS_SHAPE = (1, 8, 8)
DIGITS_CLASSES = 10

Shape = tuple[tuple[int, ...], int]


def static_shape(spec: DataSpec) -> Shape | None:
    """(row shape, class count) when the spec determines them, else None (a file)."""
    source = spec.source.strip()
    if source == "digits":
        return DIGITS_SHAPE, DIGITS_CLASSES
    if source == "synthetic":
        return tuple(spec.synthetic.input_shape), spec.synthetic.num_classes
    return None


def size_errors(spec: DataSpec) -> list[tuple[str, str]]:
    """The synthetic set's sizes taken together (each one alone is bounded by the schema)."""
    if spec.source.strip() != "synthetic":
        return []
    s = spec.synthetic
    row = math.prod(s.input_shape)
    if row > MAX_INPUT_ELEMENTS:
        return [
            (
                "data.synthetic.input_shape",
                f"{s.input_shape} is {row:,} elements per row, above the limit of "
                f"{MAX_INPUT_ELEMENTS:,}; use a smaller shape",
            )
        ]
    total = (s.n_train + s.n_val) * row
    if total > MAX_SYNTHETIC_ELEMENTS:
        return [
            (
                "data.synthetic",
                f"n_train + n_val = {s.n_train + s.n_val:,} rows of {row:,} elements are "
                f"{total:,} elements, above the limit of {MAX_SYNTHETIC_ELEMENTS:,}; use fewer "
                "rows or a smaller input_shape",
            )
        ]
    return []
