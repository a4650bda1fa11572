"""Data sources of kdcore: built-in sets, files, splits, label masking, normalisation, errors,
and augmentation."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdcore.data import DataError, Dataset, apply_normalization, load_data, make_augment
from kdcore.data.augment import gaussian_noise, random_crop, random_hflip
from kdcore.data.sources import stratified_pick
from kdcore.spec import AugmentSpec, DataSpec, SyntheticSpec


def spec(source: str | Path, **kw: Any) -> DataSpec:
    return DataSpec(source=str(source), **kw)


def synth(data: dict[str, Any] | None = None, **synthetic: Any) -> DataSpec:
    """A synthetic-source spec: keyword arguments go to SyntheticSpec, `data` to DataSpec."""
    return DataSpec(source="synthetic", synthetic=SyntheticSpec(**synthetic), **(data or {}))


def write_npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def blobs(n: int = 60, classes: int = 3, features: int = 4, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.standard_normal((n, features)) + y[:, None]).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_data(spec("digits", normalize=False))


# --- built-in sets -----------------------------------------------------------------------------


def test_digits_shapes_split_and_scale(digits: Dataset) -> None:
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert len(digits.x_val) == round(0.2 * 1797)
    assert len(digits.x_train) + len(digits.x_val) == 1797
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.x_train.shape[1:] == (1, 8, 8)
    assert digits.x_train.min() >= 0 and digits.x_train.max() <= 1
    assert digits.n_labeled == len(digits.x_train) and bool(digits.labeled_mask.all())
    assert digits.normalization is None and digits.name == "digits"


def test_digits_split_is_stratified(digits: Dataset) -> None:
    total = Counter(digits.y_train.tolist()) + Counter(digits.y_val.tolist())
    val = Counter(digits.y_val.tolist())
    for c in range(10):
        assert abs(val[c] - 0.2 * total[c]) <= 1


def test_digits_split_is_seeded(digits: Dataset) -> None:
    again = load_data(spec("digits", normalize=False))
    other = load_data(spec("digits", normalize=False, seed=1))
    assert torch.equal(again.x_val, digits.x_val) and torch.equal(again.y_val, digits.y_val)
    assert not torch.equal(other.x_val, digits.x_val)
    assert len(other.x_val) == len(digits.x_val)


@pytest.mark.parametrize("shape", [[16], [3, 20], [3, 8, 8]])
def test_synthetic_shapes(shape: list[int]) -> None:
    d = load_data(synth(input_shape=shape, num_classes=5, n_train=50, n_val=30))
    assert d.input_shape == tuple(shape) and d.num_classes == 5
    assert d.x_train.shape == (50, *shape) and d.x_val.shape == (30, *shape)
    assert sorted(set(d.y_train.tolist())) == list(range(5))
    assert d.y_val.min() >= 0 and d.n_labeled == 50


def test_synthetic_is_deterministic() -> None:
    a = load_data(synth(input_shape=[2, 6, 6], seed=3))
    b = load_data(synth(input_shape=[2, 6, 6], seed=3))
    c = load_data(synth(input_shape=[2, 6, 6], seed=4))
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.normalization == b.normalization
    assert not torch.equal(a.x_train, c.x_train)
    # data.seed drives splits and label masking only; the rows come from synthetic.seed
    d = load_data(synth({"seed": 7}, input_shape=[2, 6, 6], seed=3))
    assert torch.equal(a.x_train, d.x_train)


def _centroid_accuracy(d: Dataset) -> float:
    x, xv = d.x_train.flatten(1), d.x_val.flatten(1)
    means = torch.stack([x[d.y_train == c].mean(0) for c in range(d.num_classes)])
    pred = torch.cdist(xv, means).argmin(1)
    return (pred == d.y_val).float().mean().item()


def test_synthetic_noise_controls_difficulty() -> None:
    easy = _centroid_accuracy(load_data(synth(noise=0.0, seed=0)))
    medium = _centroid_accuracy(load_data(synth(noise=1.0, seed=0)))
    hard = _centroid_accuracy(load_data(synth(noise=3.0, seed=0)))
    assert easy == 1.0
    assert 0.4 < medium < 0.97  # learnable, not trivial (chance is 0.25)
    assert hard < medium


# --- files -------------------------------------------------------------------------------------


def test_npz_with_val_split(tmp_path: Path) -> None:
    x, y = blobs(40)
    xv, yv = blobs(12, seed=1)
    d = load_data(
        spec(
            write_npz(tmp_path / "set.npz", x_train=x, y_train=y, x_val=xv, y_val=yv),
            normalize=False,
        )
    )
    assert torch.equal(d.x_train, torch.from_numpy(x)) and torch.equal(d.y_val, torch.tensor(yv))
    assert d.num_classes == 3 and d.input_shape == (4,) and d.name == "set"


def test_npz_without_val_is_split(tmp_path: Path) -> None:
    x, y = blobs(50)
    d = load_data(spec(write_npz(tmp_path / "s.npz", x_train=x, y_train=y), val_fraction=0.3))
    assert (len(d.x_train), len(d.x_val)) == (35, 15)
    assert Counter(d.y_val.tolist()) == {0: 5, 1: 5, 2: 5}


def test_npz_images_and_int_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (20, 3, 4, 4), dtype=np.uint8)
    y = np.arange(20) % 2
    d = load_data(spec(write_npz(tmp_path / "img.npz", x_train=x, y_train=y), normalize=False))
    assert d.input_shape == (3, 4, 4) and d.x_train.dtype == torch.float32
    assert d.num_classes == 2


def test_float_labels_that_are_integers_are_accepted(tmp_path: Path) -> None:
    x, y = blobs(30)
    d = load_data(spec(write_npz(tmp_path / "f.npz", x_train=x, y_train=y.astype(np.float64))))
    assert d.y_train.dtype == torch.int64 and d.num_classes == 3


def test_pt_file(tmp_path: Path) -> None:
    x, y = blobs(30)
    xv, yv = blobs(9, seed=2)
    path = tmp_path / "set.pt"
    torch.save(
        {
            "x_train": torch.from_numpy(x).half(),
            "y_train": torch.from_numpy(y),
            "x_val": torch.from_numpy(xv),
            "y_val": torch.from_numpy(yv),
        },
        path,
    )
    d = load_data(spec(path, normalize=False))
    assert d.x_train.dtype == torch.float32 and len(d.x_val) == 9
    assert torch.allclose(d.x_train, torch.from_numpy(x), atol=1e-2)


def test_unlabeled_transfer_set(tmp_path: Path) -> None:
    x, _ = blobs(40)
    xv, yv = blobs(12, seed=1)
    d = load_data(spec(write_npz(tmp_path / "t.npz", x_train=x, x_val=xv, y_val=yv)))
    assert bool((d.y_train == -1).all()) and d.n_labeled == 0
    assert len(d.x_train) == 40 and d.num_classes == 3


def test_partly_labelled_train_splits_val_from_labelled_rows(tmp_path: Path) -> None:
    x, y = blobs(60)
    y = y.copy()
    y[:30] = -1  # the first half is a transfer set
    d = load_data(spec(write_npz(tmp_path / "p.npz", x_train=x, y_train=y), val_fraction=0.2))
    assert len(d.x_val) == 6 and bool((d.y_val >= 0).all())
    assert len(d.x_train) == 54 and d.n_labeled == 24
    assert int((d.y_train == -1).sum()) == 30


def test_csv(tmp_path: Path) -> None:
    rows = ["a,b,target,c"] + [f"{i},{i * 0.5},{i % 2},{-i}" for i in range(20)]
    d = load_data(
        spec(
            write_csv(tmp_path / "t.csv", "\n".join(rows) + "\n"),
            label_column="target",
            normalize=False,
            val_fraction=0.25,
        )
    )
    assert d.input_shape == (3,) and d.num_classes == 2
    assert (len(d.x_train), len(d.x_val)) == (15, 5)
    full = torch.cat([d.x_train, d.x_val])
    assert sorted(full[:, 0].tolist()) == list(range(20))
    assert torch.equal(full[:, 2], -full[:, 0]) and torch.equal(full[:, 1], full[:, 0] * 0.5)


def test_csv_empty_label_is_unlabeled(tmp_path: Path) -> None:
    rows = ["x,label"] + [f"{i},{'' if i < 10 else i % 2}" for i in range(30)]
    d = load_data(spec(write_csv(tmp_path / "u.csv", "\n".join(rows)), val_fraction=0.5))
    assert len(d.x_val) == 10 and int((d.y_train == -1).sum()) == 10


# --- labeled_fraction and normalisation --------------------------------------------------------


def test_labeled_fraction(digits: Dataset) -> None:
    d = load_data(spec("digits", normalize=False, labeled_fraction=0.1))
    assert d.n_labeled == round(0.1 * len(digits.x_train))
    assert torch.equal(d.x_train, digits.x_train)  # masking changes labels, not rows
    kept = d.labeled_mask
    assert torch.equal(d.y_train[kept], digits.y_train[kept])
    assert bool((d.y_train[~kept] == -1).all())
    per_class = Counter(d.y_train[kept].tolist())
    assert min(per_class.values()) >= 13 and max(per_class.values()) <= 16  # stratified
    again = load_data(spec("digits", normalize=False, labeled_fraction=0.1))
    other = load_data(spec("digits", normalize=False, labeled_fraction=0.1, seed=5))
    assert torch.equal(again.y_train, d.y_train) and not torch.equal(other.y_val, d.y_val)
    # the hidden labels are kept aside for a teacher trained in the job
    assert d.y_train_all is not None and torch.equal(d.y_train_all, digits.y_train)
    assert digits.y_train_all is None


def test_stratified_pick_exact_count() -> None:
    labels = np.array([0] * 7 + [1] * 2 + [2] * 1)
    for n in range(1, 11):
        picked = stratified_pick(labels, n, np.random.default_rng(0))
        assert len(picked) == n == len(set(picked.tolist()))


def test_normalization_per_channel() -> None:
    d = load_data(synth(input_shape=[3, 6, 6], n_train=200))
    assert d.normalization is not None and len(d.normalization["mean"]) == 3
    dims = (0, 2, 3)
    assert torch.allclose(d.x_train.mean(dims), torch.zeros(3), atol=1e-5)
    assert torch.allclose(d.x_train.std(dims, unbiased=False), torch.ones(3), atol=1e-4)


def test_normalization_digits_single_channel() -> None:
    d = load_data(spec("digits"))
    assert d.normalization is not None and len(d.normalization["std"]) == 1
    assert abs(d.x_train.mean().item()) < 1e-5
    assert abs(d.x_train.std(unbiased=False).item() - 1) < 1e-4


def test_normalization_by_hand_flat(tmp_path: Path) -> None:
    x = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]], dtype=np.float32)
    xv = np.array([[3.0, 4.0]], dtype=np.float32)
    path = write_npz(tmp_path / "h.npz", x_train=x, y_train=[0, 1, 0], x_val=xv, y_val=[1])
    d = load_data(spec(path))
    sd = math.sqrt(8 / 3)  # population std of 1, 3, 5; the constant column keeps scale 1
    assert d.normalization is not None
    assert d.normalization["mean"] == pytest.approx([3.0, 2.0])
    assert d.normalization["std"] == pytest.approx([sd, 1.0])
    expected = torch.tensor([[-2 / sd, 0.0], [0.0, 0.0], [2 / sd, 0.0]])
    assert torch.allclose(d.x_train, expected)
    assert torch.allclose(d.x_val, torch.tensor([[0.0, 2.0]]))
    assert torch.allclose(apply_normalization(torch.from_numpy(xv), d.normalization), d.x_val)


def test_normalization_by_hand_channels(tmp_path: Path) -> None:
    # two samples, two channels of length 2: channel 0 holds 0, 2, 4, 6; channel 1 holds 1s
    x = np.array([[[0, 2], [1, 1]], [[4, 6], [1, 1]]], dtype=np.float32)
    path = write_npz(tmp_path / "c.npz", x_train=x, y_train=[0, 1], x_val=x, y_val=[0, 1])
    d = load_data(spec(path))
    assert d.normalization is not None
    assert d.normalization["mean"] == pytest.approx([3.0, 1.0])
    assert d.normalization["std"] == pytest.approx([math.sqrt(5), 1.0])
    assert torch.allclose(d.x_train[:, 0], (torch.tensor([[0.0, 2], [4, 6]]) - 3) / math.sqrt(5))
    assert torch.equal(d.x_train[:, 1], torch.zeros(2, 2))


# --- errors ------------------------------------------------------------------------------------


class Payload:
    """Stands for any pickled object in an upload; loading it would run arbitrary code."""


def _pickled_pt(path: Path) -> None:
    torch.save({"x_train": torch.zeros(4, 2), "y_train": Payload()}, path)


def _bad(tmp_path: Path, case: str) -> tuple[DataSpec, str]:
    """A spec that must fail, and the field it must blame."""
    x, y = blobs(20)
    p = tmp_path / f"{case}.npz"
    if case == "missing_file":
        return spec(tmp_path / "nope.npz"), "data.source"
    if case == "unknown_extension":
        (tmp_path / "d.parquet").write_text("x")
        return spec(tmp_path / "d.parquet"), "data.source"
    if case == "unknown_name":
        return spec("cifar10"), "data.source"
    if case == "not_an_archive":
        p.write_text("hello")
        return spec(p), "data.source"
    if case == "missing_x_train":
        write_npz(p, X=x, y_train=y)
    elif case == "unknown_key":
        write_npz(p, x_train=x, y_train=y, labels=y)
    elif case == "non_integer_labels":
        write_npz(p, x_train=x, y_train=y + 0.5)
    elif case == "string_labels":
        write_npz(p, x_train=x, y_train=np.array(["a"] * 20))
    elif case == "nan_features":
        x[3, 1] = np.nan
        write_npz(p, x_train=x, y_train=y)
    elif case == "inf_features":
        x[0, 0] = np.inf
        write_npz(p, x_train=x, y_train=y)
    elif case == "length_mismatch":
        write_npz(p, x_train=x, y_train=y[:-1])
    elif case == "val_length_mismatch":
        write_npz(p, x_train=x, y_train=y, x_val=x, y_val=y[:5])
    elif case == "no_labels_no_val":
        write_npz(p, x_train=x)
    elif case == "all_unlabeled_no_val":
        write_npz(p, x_train=x, y_train=np.full(20, -1))
    elif case == "x_val_without_y_val":
        write_npz(p, x_train=x, y_train=y, x_val=x)
    elif case == "y_val_without_x_val":
        write_npz(p, x_train=x, y_train=y, y_val=y)
    elif case == "unlabeled_val":
        write_npz(p, x_train=x, y_train=y, x_val=x, y_val=np.full(20, -1))
    elif case == "negative_label":
        write_npz(p, x_train=x, y_train=y - 2)
    elif case == "one_class":
        write_npz(p, x_train=x, y_train=np.zeros(20, int))
    elif case == "val_shape_mismatch":
        write_npz(p, x_train=x, y_train=y, x_val=x[:, :3], y_val=y)
    elif case == "one_dim_features":
        write_npz(p, x_train=x[:, 0], y_train=y)
    elif case == "object_array":
        write_npz(p, x_train=np.array([[1], "a"], dtype=object), y_train=[0, 1])
    elif case == "pickled_pt":
        p = tmp_path / "evil.pt"
        _pickled_pt(p)
    elif case == "pt_not_a_dict":
        p = tmp_path / "t.pt"
        torch.save(torch.zeros(3, 2), p)
    elif case == "csv_missing_label_column":
        return spec(write_csv(tmp_path / "c.csv", "a,b\n1,0\n2,1\n")), "data.label_column"
    elif case == "csv_text_feature":
        return spec(write_csv(tmp_path / "c.csv", "a,label\n1,0\nx,1\n")), "data.source"
    elif case == "csv_text_label":
        return spec(write_csv(tmp_path / "c.csv", "a,label\n1,0\n2,cat\n")), "data.label_column"
    elif case == "csv_fractional_label":
        return spec(write_csv(tmp_path / "c.csv", "a,label\n1,0\n2,1.5\n")), "data.label_column"
    elif case == "csv_ragged":
        return spec(write_csv(tmp_path / "c.csv", "a,b,label\n1,2,0\n2,1\n")), "data.source"
    elif case == "csv_empty":
        return spec(write_csv(tmp_path / "c.csv", "")), "data.source"
    elif case == "hflip_on_flat":
        return synth({"augment": AugmentSpec(hflip=True)}), "data.augment.hflip"
    elif case == "crop_on_sequence":
        return synth(
            {"augment": AugmentSpec(crop_padding=2)}, input_shape=[2, 8]
        ), "data.augment.crop_padding"
    else:
        raise AssertionError(case)
    return spec(p), "data.source"


ERROR_CASES = [
    "missing_file",
    "unknown_extension",
    "unknown_name",
    "not_an_archive",
    "missing_x_train",
    "unknown_key",
    "non_integer_labels",
    "string_labels",
    "nan_features",
    "inf_features",
    "length_mismatch",
    "val_length_mismatch",
    "no_labels_no_val",
    "all_unlabeled_no_val",
    "x_val_without_y_val",
    "y_val_without_x_val",
    "unlabeled_val",
    "negative_label",
    "one_class",
    "val_shape_mismatch",
    "one_dim_features",
    "object_array",
    "pickled_pt",
    "pt_not_a_dict",
    "csv_missing_label_column",
    "csv_text_feature",
    "csv_text_label",
    "csv_fractional_label",
    "csv_ragged",
    "csv_empty",
    "hflip_on_flat",
    "crop_on_sequence",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_data_is_a_data_error_naming_the_field(tmp_path: Path, case: str) -> None:
    bad, field = _bad(tmp_path, case)
    with pytest.raises(DataError) as info:
        load_data(bad)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ValueError)


def test_error_messages_say_what_to_do(tmp_path: Path) -> None:
    x, _ = blobs(10)
    with pytest.raises(DataError, match=r"labelled validation split.*x_val and y_val"):
        load_data(spec(write_npz(tmp_path / "u.npz", x_train=x)))
    with pytest.raises(DataError, match="NaN/inf"):
        x[0, 0] = np.nan
        load_data(spec(write_npz(tmp_path / "n.npz", x_train=x, y_train=np.arange(10) % 2)))
    with pytest.raises(DataError, match="pickled"):
        _pickled_pt(tmp_path / "evil.pt")
        load_data(spec(tmp_path / "evil.pt"))


# --- augmentation ------------------------------------------------------------------------------


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_inactive_is_none() -> None:
    assert make_augment(AugmentSpec()) is None


@pytest.mark.parametrize(
    "aug",
    [
        AugmentSpec(noise_std=0.1),
        AugmentSpec(hflip=True),
        AugmentSpec(crop_padding=2),
        AugmentSpec(noise_std=0.1, hflip=True, crop_padding=1),
    ],
)
def test_augment_shape_and_determinism(aug: AugmentSpec) -> None:
    fn = make_augment(aug)
    assert fn is not None
    x = torch.randn(16, 3, 8, 8, generator=_gen(9))
    a, b = fn(x, _gen(1)), fn(x, _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(fn(x, _gen(2)), a)


def test_hflip_forced_equals_torch_flip() -> None:
    x = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32).view(2, 2, 2, 3)
    assert torch.equal(random_hflip(x, _gen(), p=1.0), torch.flip(x, dims=[-1]))
    assert torch.equal(random_hflip(x, _gen(), p=0.0), x)


def test_hflip_flips_whole_samples() -> None:
    x = torch.randn(64, 1, 4, 5, generator=_gen(3))
    out = make_augment(AugmentSpec(hflip=True))(x, _gen(4))  # type: ignore[misc]
    flipped = [bool(torch.equal(o, xi.flip(-1))) for o, xi in zip(out, x, strict=True)]
    kept = [bool(torch.equal(o, xi)) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_crop_is_a_window_of_the_padded_image() -> None:
    x = torch.arange(1, 1 + 4 * 2 * 3 * 3, dtype=torch.float32).view(4, 2, 3, 3)
    out = random_crop(x, 1, _gen(5))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for o, p in zip(out, padded, strict=True):
        windows = [p[:, i : i + 3, j : j + 3] for i in range(3) for j in range(3)]
        assert any(torch.equal(o, w) for w in windows)
    assert not all(torch.equal(o, xi) for o, xi in zip(out, x, strict=True))


def test_noise_changes_values_by_about_std() -> None:
    x = torch.zeros(32, 50)
    out = gaussian_noise(x, 0.5, _gen())
    assert not torch.equal(out, x)
    assert abs(out.std().item() - 0.5) < 0.05
    assert torch.equal(make_augment(AugmentSpec(noise_std=0.5))(x, _gen()), out)  # type: ignore[misc]


def test_augment_flip_rejects_flat_batches() -> None:
    with pytest.raises(ValueError, match="image batches"):
        random_hflip(torch.zeros(4, 10), _gen())
