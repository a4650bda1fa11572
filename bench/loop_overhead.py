"""What the training loop costs on top of the work itself (issue 12, item 9), on CPU.

Per case, medians over `--repeats` interleaved runs; each run's epoch time is the fastest of its
epochs after the first (which warms up): on a shared machine, other processes only ever add time,
so the fastest epoch is the steadiest estimate of what the loop itself costs.

- plain: a hand-written PyTorch CE loop (same model, data, batch size, optimizer, a seeded
  torch.Generator shuffle), the floor;
- fit CE: `kdcore.train.fit` with CE (target ≤ 1.05 × plain);
- fit KD cached: `fit` with KD and the teacher-output cache (target ≤ 1.10 × fit CE);
- eval+ckpt share: of a whole `fit` CE stage (wall clock of the call, checkpoints written to a
  temporary folder), the part outside the batch loops (target ≤ 10 %).

    .venv/bin/python bench/loop_overhead.py [--epochs 10] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from kdcore.checkpoint import FolderCheckpoints
from kdcore.data import load_data
from kdcore.data.dataset import Dataset
from kdcore.methods import registry as methods
from kdcore.models.registry import build_model
from kdcore.spec import DataSpec, TrainSpec
from kdcore.train import StageContext, Teaching, fit, make_optimizer

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
        "synthetic 3x16x16, 4k rows",
        {
            "source": "synthetic",
            "synthetic": {
                "input_shape": [3, 16, 16],
                "num_classes": 10,
                "n_train": 4000,
                "n_val": 500,
            },
        },
        ("convnet", {"channels": [16, 32]}),
        ("convnet", {"channels": [8, 16]}),
        256,
    ),
]


def plain_epoch_seconds(data: Dataset, spec: TrainSpec, student: tuple) -> float:
    torch.manual_seed(spec.seed)
    model = build_model(student[0], data.input_shape, data.num_classes, **student[1])
    opt = make_optimizer(list(model.parameters()), spec.optimizer)
    g = torch.Generator().manual_seed(spec.seed)
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    times = []
    for _ in range(spec.epochs):
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(n, generator=g).split(spec.batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def fit_run(
    data: Dataset, spec: TrainSpec, student: tuple, teacher: torch.nn.Module | None, method: str
) -> tuple[float, float]:
    """(median batch-loop seconds per epoch, share of the stage outside the batch loops)."""
    torch.manual_seed(spec.seed)
    model = build_model(student[0], data.input_shape, data.num_classes, **student[1])
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(
            name="bench",
            data=data,
            train=spec,
            teacher=Teaching(teacher),
            checkpoints=FolderCheckpoints(tmp),
        )
        start = time.perf_counter()
        res = fit(model, methods.build(method), ctx)
        wall = time.perf_counter() - start
    loops = sum(r.train_seconds for r in res.history)
    return min(r.train_seconds for r in res.history[1:]), 1 - loops / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)  # TrainSpec's default
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads (1: on a shared machine, 2 threads stall whenever another "
        "process holds a core, and epoch times then swing 10x)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, "
        f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(
        f"{'data':<28} {'plain s/ep':>10} {'fit CE':>8} {'KD cached':>9} "
        f"{'CE/plain':>8} {'KD/CE':>6} {'eval+ckpt %':>11}"
    )
    for name, data_spec, t_arch, s_arch, bs in CASES:
        data = load_data(DataSpec.model_validate(data_spec))
        spec = TrainSpec(epochs=args.epochs, batch_size=bs, device="cpu")
        torch.manual_seed(0)
        teacher = build_model(t_arch[0], data.input_shape, data.num_classes, **t_arch[1]).eval()
        plain, ce, kd, share = [], [], [], []
        for _ in range(args.repeats):
            plain.append(plain_epoch_seconds(data, spec, s_arch))
            t, s = fit_run(data, spec, s_arch, None, "ce")
            ce.append(t)
            share.append(s)
            kd.append(fit_run(data, spec, s_arch, teacher, "kd")[0])
        p, c, k = (statistics.median(v) for v in (plain, ce, kd))
        print(
            f"{name:<28} {p:>10.4f} {c:>8.4f} {k:>9.4f} {c / p:>8.3f} {k / c:>6.3f} "
            f"{100 * statistics.median(share):>10.1f}%"
        )
    print(f"load after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
