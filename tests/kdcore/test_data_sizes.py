"""Data sizes checked before anything is generated or read: what the spec says a built-in set's
rows are, the synthetic set's total size, and a data file's arrays by their headers."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kdcore.data import DataError, load_data
from kdcore.data.sizes import DIGITS_CLASSES, DIGITS_SHAPE, size_errors, static_shape
from kdcore.spec import DataSpec


def test_the_digits_shape_the_spec_implies_is_the_one_loaded() -> None:
    spec = DataSpec(source="digits")
    data = load_data(spec)
    assert static_shape(spec) == (DIGITS_SHAPE, DIGITS_CLASSES)
    assert (data.input_shape, data.num_classes) == (DIGITS_SHAPE, DIGITS_CLASSES)


def test_a_file_shape_is_known_only_once_read() -> None:
    assert static_shape(DataSpec(source="upload:abc")) is None


def test_the_synthetic_set_is_bounded_as_a_whole() -> None:
    ok = DataSpec.model_validate({"source": "synthetic", "synthetic": {"input_shape": [3, 32, 32]}})
    assert size_errors(ok) == []
    wide = DataSpec.model_validate(
        {"source": "synthetic", "synthetic": {"input_shape": [4096, 4096]}}
    )
    assert [loc for loc, _ in size_errors(wide)] == ["data.synthetic.input_shape"]
    many = DataSpec.model_validate(
        {"source": "synthetic", "synthetic": {"input_shape": [1024], "n_train": 1_000_000}}
    )
    ((loc, msg),) = size_errors(many)
    assert loc == "data.synthetic" and "268,435,456" in msg


def test_an_archive_array_too_large_is_refused_from_its_header(tmp_path: Path) -> None:
    """A few bytes on disk declaring 2^31 float32 elements (8 GiB): refused before reading."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**11)}
    )
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", header.getvalue())  # the header alone: no data follows
    with pytest.raises(DataError) as info:
        load_data(DataSpec(source=str(path)))
    assert info.value.field == "data.source"
    assert "2,147,483,648 elements" in info.value.message and "limit" in info.value.message
