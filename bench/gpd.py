"""Gap-preserving distillation (GPD) against scratch, KD and DKD, in its three scenarios.

The task has a real capacity gap: scikit-learn digits, teacher convnet [32, 64] (≈ 20k
parameters), student convnet [8, 16] (≈ 1.4k, 14× smaller). One teacher (seed 0, all labels);
per row and seed a fresh student (seed = init and batch order), `--epochs` epochs of Adam with a
cosine schedule, in a fresh process each, so that its peak memory is its own.

Rows (the same DKD/KD settings with and without GPD, so the comparison is the paper's):
- scratch (CE), kd (T 4), dkd (T 4, β 8, warm-up 2);
- GPD with the static teacher: L_KD = dkd or kd with those settings, ratio 2, λ 3;
- GPD from scratch, no teacher (with and without channel-branch reparameterization);
- fine-tuning: the scratch student of the same seed, trained `--epochs // 2` more epochs at a
  lower lr, by CE alone ("longer fine-tune") or by GPD's finetune scenario (CBR on).

Printed per row: student accuracy (mean ± std over seeds), gap to the teacher, the change against
scratch, the dynamic teacher's accuracy (GPD rows), trained parameters, seconds per run and the
run's peak resident memory above what the process held before training (CPU; on a GPU it
would be torch.cuda.max_memory_allocated).

    .venv/bin/python bench/gpd.py [--seeds 3] [--epochs 20] [--labeled 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from kdcore.data import load_data
from kdcore.data.dataset import Dataset
from kdcore.evaluate import accuracy, count_params
from kdcore.methods import registry
from kdcore.models.registry import build_model
from kdcore.schemes.gpd.trainee import GPDTrainee
from kdcore.spec import DataSpec, TrainSpec
from kdcore.train import StageContext, Teaching, fit, freeze

TEACHER = [32, 64]
STUDENT = [8, 16]
DKD = {"temperature": 4.0, "beta": 8.0, "warmup": 2}
GPD_DKD = {"kd": "dkd", "temperature": 4.0, "dkd_beta": 8.0, "warmup": 2}


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    method: str
    params: dict[str, Any]
    finetune: bool = False  # start from the scratch student of the same seed


ROWS = [
    Row("scratch (CE)", "ce", {}),
    Row("kd (T 4)", "kd", {"temperature": 4.0}),
    Row("dkd (T 4, β 8, warm-up 2)", "dkd", DKD),
    Row("gpd + dkd (static teacher)", "gpd", GPD_DKD),
    Row("gpd + kd (static teacher)", "gpd", {"kd": "kd", "temperature": 4.0}),
    Row("gpd, no teacher (scratch)", "gpd", {"scenario": "scratch"}),
    Row("gpd + cbr, no teacher (scratch)", "gpd", {"scenario": "scratch", "cbr": True}),
    Row("fine-tune: CE, longer", "ce", {}, finetune=True),
    Row("fine-tune: gpd + cbr", "gpd", {"scenario": "finetune", "cbr": True}, finetune=True),
]


def build(channels: list[int], data: Dataset, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("convnet", data.input_shape, data.num_classes, channels=channels)


def train_spec(epochs: int, seed: int, lr: float = 0.003, clip: float | None = None) -> TrainSpec:
    return TrainSpec(
        epochs=epochs,
        batch_size=64,
        seed=seed,
        device="cpu",
        optimizer={"name": "adam", "lr": lr},
        scheduler={"name": "cosine"},
        grad_clip=clip,
    )


def rss_mb() -> float:
    """Resident memory now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_one(
    row: Row, seed: int, labeled: float, epochs: int, teacher_file: str, start_file: str | None
) -> dict[str, float]:
    """One student in this (fresh) process: accuracy, DT accuracy, seconds, peak MB."""
    torch.set_num_threads(1)
    data = load_data(DataSpec(source="digits", labeled_fraction=labeled))
    teacher = build(TEACHER, data, 0)
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True))
    freeze(teacher)
    student = build(STUDENT, data, seed)
    if start_file is not None:
        student.load_state_dict(torch.load(start_file, weights_only=True))
    method = registry.build(row.method, row.params)
    gpd = row.method == "gpd"
    trained: torch.nn.Module = student
    if gpd:
        p = method.hparams
        branches = ("finetune" if row.finetune else "fresh") if p.cbr else None  # type: ignore[attr-defined]
        trained = GPDTrainee(student, p.ratio, p.noise, seed, branches)  # type: ignore[attr-defined]
    stage_epochs, lr = (max(epochs // 2, 1), 0.0005) if row.finetune else (epochs, 0.003)
    spec = train_spec(stage_epochs, seed, lr, clip=5.0 if gpd else None)
    before = rss_mb()
    started = time.perf_counter()
    fit(
        trained,
        method,
        StageContext(name=row.label, data=data, train=spec, teacher=Teaching(teacher)),
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "seconds": seconds,
        "peak_mb": peak - before,
        "trained_params": float(count_params(trained)),
    }
    if isinstance(trained, GPDTrainee):
        student = trained.student()
        result["dt_accuracy"] = accuracy(trained.dynamic_teacher(), data.x_val, data.y_val)
    result["accuracy"] = accuracy(student, data.x_val, data.y_val)
    if row.label == "scratch (CE)":
        torch.save(student.state_dict(), Path(teacher_file).with_name(f"scratch-{seed}.pt"))
    return result


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--labeled", type=float, default=1.0, help="student's labelled share")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)
    data = load_data(DataSpec(source="digits", labeled_fraction=args.labeled))
    full = data if data.y_train_all is None else dataclasses.replace(data, y_train=data.y_train_all)
    teacher = build(TEACHER, data, 0)
    fit(
        teacher,
        registry.build("ce"),
        StageContext(name="teacher", data=full, train=train_spec(args.epochs, 0)),
    )
    t_acc = accuracy(teacher, data.x_val, data.y_val)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpd-"))
    teacher_file = tmp / "teacher.pt"
    torch.save(teacher.state_dict(), teacher_file)

    results: dict[str, list[dict[str, float]]] = {}
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
        for row in ROWS:
            for seed in range(args.seeds):
                start = str(tmp / f"scratch-{seed}.pt") if row.finetune else None
                job = pool.submit(
                    run_one, row, seed, args.labeled, args.epochs, str(teacher_file), start
                )
                results.setdefault(row.label, []).append(job.result())
            accs = [r["accuracy"] for r in results[row.label]]
            seeds = ", ".join(f"{a:.2f}" for a in accs)
            print(f"  {row.label}: {mean_std(accs)} (seeds: {seeds})", flush=True)

    scratch = [r["accuracy"] for r in results["scratch (CE)"]]
    print(
        f"\nteacher {t_acc:.2f}% ({count_params(teacher):,} parameters); student "
        f"{count_params(build(STUDENT, data, 0)):,} parameters; {data.n_labeled} of "
        f"{len(data.x_train)} training rows labelled for the student; {len(data.x_val)} "
        f"validation rows; {args.epochs} epochs ({max(args.epochs // 2, 1)} more to fine-tune); "
        f"{args.seeds} seeds; 1 torch thread per run\n"
    )
    print(
        "| method | student acc % | gap to teacher | vs scratch | dynamic teacher acc % | "
        "trained params | s/run | peak MB |\n|---|---|---|---|---|---|---|---|"
    )
    for row in ROWS:
        rs = results[row.label]
        accs = [r["accuracy"] for r in rs]
        dt = [r["dt_accuracy"] for r in rs if "dt_accuracy" in r]
        print(
            f"| {row.label} | {mean_std(accs)} | {mean_std([t_acc - a for a in accs])} | "
            f"{mean_std([a - b for a, b in zip(accs, scratch, strict=True)])} | "
            f"{mean_std(dt) if dt else '–'} | {int(rs[0]['trained_params']):,} | "
            f"{statistics.mean(r['seconds'] for r in rs):.1f} | "
            f"{statistics.mean(r['peak_mb'] for r in rs):.1f} |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
