"""Data sources behind one interface: `load_data(spec.data)` → `Dataset` (in-memory tensors).

Sources: the built-in ``digits`` and ``synthetic`` sets, ``.npz`` / ``.pt`` tensor archives and
``.csv`` tables; labels are optional in training data (an unlabeled transfer set), never in
validation data. `make_augment` builds the seeded per-batch augmentation the trainer applies.
"""

from kdcore.data.augment import Augment, make_augment
from kdcore.data.dataset import DataError, Dataset, apply_normalization
from kdcore.data.sources import BUILTIN, FILE_TYPES, load_data

__all__ = [
    "BUILTIN",
    "FILE_TYPES",
    "Augment",
    "DataError",
    "Dataset",
    "apply_normalization",
    "load_data",
    "make_augment",
]
