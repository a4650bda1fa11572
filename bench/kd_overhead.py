"""How much slower is a distillation epoch than a plain CE epoch of the same student?

Prints, per dataset, the median batch-loop time of one epoch for: the student alone (CE), KD with
the teacher-output cache, and KD computing the teacher on every batch; and the ratios to CE.
Target (issue 2): KD with the cache ≤ 1.10 × CE. The one-off cost of filling the cache is printed
too, since it is paid once per job.

    .venv/bin/python bench/kd_overhead.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdcore.data import load_data
from kdcore.data.dataset import Dataset
from kdcore.evaluate import predict_logits
from kdcore.methods import registry as methods
from kdcore.models.registry import build_model
from kdcore.spec import DataSpec, TrainSpec
from kdcore.train import StageContext, Teaching, fit

CASES = [
    # name, data spec, teacher (arch, kwargs), student (arch, kwargs), batch size
    (
        "digits",
        {"source": "digits"},
        ("mlp", {"hidden": [256, 256]}),
        ("mlp", {"hidden": [32]}),
        128,
    ),
    (
        "synthetic 3x16x16, 20k rows",
        {
            "source": "synthetic",
            "synthetic": {
                "input_shape": [3, 16, 16],
                "num_classes": 10,
                "n_train": 20000,
                "n_val": 1000,
            },
        },
        ("resnet8x4", {}),
        ("convnet", {"channels": [8, 16]}),
        256,
    ),
]


def epoch_seconds(
    data: Dataset,
    spec: TrainSpec,
    student: tuple,
    teacher: torch.nn.Module | None,
    method: str,
    cache: bool,
) -> float:
    torch.manual_seed(0)
    model = build_model(student[0], data.input_shape, data.num_classes, **student[1])
    res = fit(
        model,
        methods.build(method),
        StageContext(name="bench", data=data, train=spec, teacher=Teaching(teacher, cache=cache)),
    )
    times = [r.train_seconds for r in res.history[1:]]  # first epoch warms up
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(
        f"{'data':<30} {'CE s/epoch':>10} {'KD cached':>10} {'KD live':>10} "
        f"{'cached/CE':>10} {'live/CE':>8} {'cache fill s':>12}"
    )
    for name, data_spec, t_arch, s_arch, bs in CASES:
        data = load_data(DataSpec.model_validate(data_spec))
        spec = TrainSpec(epochs=args.epochs, batch_size=bs, device="cpu")
        torch.manual_seed(0)
        teacher = build_model(t_arch[0], data.input_shape, data.num_classes, **t_arch[1]).eval()
        start = time.perf_counter()
        predict_logits(teacher, data.x_train)
        fill = time.perf_counter() - start
        ce = epoch_seconds(data, spec, s_arch, None, "ce", cache=False)
        cached = epoch_seconds(data, spec, s_arch, teacher, "kd", cache=True)
        live = epoch_seconds(data, spec, s_arch, teacher, "kd", cache=False)
        print(
            f"{name:<30} {ce:>10.4f} {cached:>10.4f} {live:>10.4f} "
            f"{cached / ce:>10.3f} {live / ce:>8.2f} {fill:>12.3f}"
        )


if __name__ == "__main__":
    main()
