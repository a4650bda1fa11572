"""How big a job may be: the bounds of every size a spec states, and the budget the models it
builds are held to.

A spec is untrusted input: without bounds, `n_train: 1e9` or an MLP 100 000 units wide is
accepted and then fails at allocation, in the worker, as a crash. The static bounds below are
checked by the spec's schema (kdcore/spec.py) and the data sources (kdcore/data/sizes.py); the
budget (`Limits`) by the meta-device estimate of kdcore/budget.py, at submit when the data's
shape is known from the spec and in the pipeline before any training otherwise. The service
sets the budget (DISTILLERY_MAX_MODEL_PARAMS, ..., per project); `distill run` and `distill
validate` use `DEFAULT_LIMITS`. No torch here: the API imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- static bounds of the spec's sizes ---------------------------------------------------------

#: classes of a classification task (also the largest label a data file may hold)
MAX_CLASSES = 100_000
#: rows of each split of the synthetic set
MAX_SYNTHETIC_ROWS = 1_000_000
#: one axis of an input row (features, channels, length, height or width)
MAX_INPUT_DIM = 4096
#: elements of one input row (3x1024x1024 is 3.1M)
MAX_INPUT_ELEMENTS = 2**22
#: elements of the whole synthetic set, both splits (generated in float64: 2 GiB each copy)
MAX_SYNTHETIC_ELEMENTS = 2**28
#: rows per timed forward, and timed forwards per model
MAX_LATENCY_BATCH = 4096
MAX_LATENCY_RUNS = 1000
#: pixels of random-crop padding
MAX_CROP_PADDING = 128
#: entries of `teachers` and of `assistants` (each one is a model built and trained or run)
MAX_MODELS = 32
#: elements of one array of a data file, read from its header before the array itself
MAX_DATA_ELEMENTS = 2**30


# --- the budget of the models a job builds ----------------------------------------------------

DEFAULT_MAX_MODEL_PARAMS = 2_000_000_000
DEFAULT_MAX_TRAINING_MEMORY_BYTES = 64 * 1024**3


@dataclass(frozen=True)
class Limits:
    """The budget of one job: parameters of any one model it builds (what trains together
    counts as one: DML's peers, GPD's student with its dynamic teacher), and the memory a
    training stage or the evaluation needs (weights, gradients, optimizer state, activations)."""

    max_model_params: int = DEFAULT_MAX_MODEL_PARAMS
    max_training_memory_bytes: int = DEFAULT_MAX_TRAINING_MEMORY_BYTES


DEFAULT_LIMITS = Limits()
