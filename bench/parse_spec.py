"""What the size limits cost at submit: `parse_spec` with and without the models' estimate.

The estimate builds every architecture of the spec on the meta device and runs one forward
there (kdcore/estimate.py); it is cached per architecture, kwargs and data shape. Prints, per
spec, the median milliseconds of: parse_spec with the estimate's cache cleared each time (a new
architecture: what a first submission pays), parse_spec with the cache warm (the same models
again), and the size checks alone, cold. Printed first: the first parse_spec of a process
without an estimate (a file's data: imports and registries, as before the limits), then the
first estimate, which pays a one-off import of torch._dynamo (torch's meta kernels are Python
functions that load it on their first call; a worker imports it anyway, for torch.export).

    .venv/bin/python bench/parse_spec.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from kdcore.budget import spec_size_errors
from kdcore.estimate import _cached
from kdcore.limits import DEFAULT_LIMITS
from kdcore.validation import parse_spec

CIFAR = {"source": "synthetic", "synthetic": {"input_shape": [3, 32, 32], "num_classes": 100}}


def spec(teacher: tuple[str, dict[str, Any]], student: tuple[str, dict[str, Any]]) -> Any:
    return {
        "name": "bench",
        "teacher": {"arch": teacher[0], "kwargs": teacher[1], "train": {"epochs": 1}},
        "student": {"arch": student[0], "kwargs": student[1]},
        "data": CIFAR,
    }


CASES = [
    ("digits: mlp 256 → mlp 32", {**spec(("mlp", {}), ("mlp", {"hidden": [32]})),
                                  "data": {"source": "digits"}}),
    ("cifar: resnet32x4 → resnet8x4", spec(("resnet32x4", {}), ("resnet8x4", {}))),
    ("cifar: resnet110 → resnet20", spec(("resnet110", {}), ("resnet20", {}))),
    ("cifar: wrn_40_2 → wrn_16_2", spec(("wrn_40_2", {}), ("wrn_16_2", {}))),
    ("cifar: vit_tiny depth 8 → mobilenet_tiny", spec(("vit_tiny", {"depth": 8}),
                                                      ("mobilenet_tiny", {}))),
]  # fmt: skip


def median_ms(fn: Callable[[], object], runs: int, cold: bool) -> float:
    times = []
    for _ in range(runs):
        if cold:
            _cached.cache_clear()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs

    start = time.perf_counter()
    parse_spec({**CASES[1][1], "data": {"source": "upload:data"}})
    print(f"first parse_spec of the process, no estimate (imports, registries): "
          f"{(time.perf_counter() - start) * 1000:.0f} ms")  # fmt: skip
    start = time.perf_counter()
    parse_spec(CASES[0][1])
    print(f"then the first with an estimate (imports torch._dynamo once): "
          f"{(time.perf_counter() - start) * 1000:.0f} ms\n")  # fmt: skip

    print(f"{'spec':42} {'cold':>8} {'warm':>8} {'sizes only':>11}   (median ms, {runs} runs)")
    for name, data in CASES:
        parsed = parse_spec(data)
        cold = median_ms(partial(parse_spec, data), runs, cold=True)
        warm = median_ms(partial(parse_spec, data), runs, cold=False)
        sizes = median_ms(partial(spec_size_errors, parsed, DEFAULT_LIMITS), runs, cold=True)
        print(f"{name:42} {cold:8.1f} {warm:8.1f} {sizes:11.1f}")


if __name__ == "__main__":
    main()
