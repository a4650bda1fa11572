"""Every distillation method on the same teacher–student pair, over seeds: a markdown table.

Settings (CPU, a few minutes on 2 cores):
- `digits`: scikit-learn digits, all labels. Teacher convnet [32, 64] (≈ 20k parameters),
  student convnet [8, 16] (≈ 1.4k): a real capacity gap (the student alone stays ~5 points
  below the teacher).
- `digits-10%`: the same, but the student sees labels for 10% of the training rows (the teacher,
  trained on all of them, stands for a teacher trained on the full labelled set); the other rows
  are a transfer set that only the teacher can explain.

One teacher per setting (seed 0), then per method and seed a fresh student (seed = init and
batch order). Each method runs with its paper's defaults, except DKD's warm-up (20 epochs is
for 240-epoch schedules; here 2) and the named layers (conv blocks; `pool` for RKD/CC).
FSP is left out: it needs teacher and student layers of equal widths, which this pair lacks.

    .venv/bin/python bench/methods.py [--seeds 3] [--epochs 20] [--settings digits digits-10%]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import torch

from kdcore.data import load_data
from kdcore.data.dataset import Dataset
from kdcore.evaluate import accuracy, count_params
from kdcore.methods import registry
from kdcore.models.registry import build_model
from kdcore.schemes.mutual import PeerGroup
from kdcore.spec import DataSpec, TrainSpec
from kdcore.train import StageContext, Teaching, fit, freeze

TEACHER = {"arch": "convnet", "channels": [32, 64]}
STUDENT = {"arch": "convnet", "channels": [8, 16]}
SETTINGS = {"digits": 1.0, "digits-10%": 0.1}
BLOCKS = {"student_layers": ["block1", "block2"], "teacher_layers": ["block1", "block2"]}
# (row label, method, params): defaults unless said otherwise in the label.
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("scratch (CE only)", "ce", {}),
    ("kd", "kd", {}),
    ("dkd (warmup 2)", "dkd", {"warmup": 2}),
    ("fitnets (block1, block2)", "fitnets", BLOCKS),
    ("at (block1, block2)", "at", BLOCKS),
    ("at, β = 10", "at", {**BLOCKS, "beta": 10.0}),
    ("sp (block2)", "sp", {"student_layers": ["block2"], "teacher_layers": ["block2"]}),
    ("rkd (pool)", "rkd", {}),
    ("cc (pool)", "cc", {}),
    ("combined: kd + rkd", "combined", {"terms": [{"name": "kd"}, {"name": "rkd"}]}),
    ("tf_kd (no teacher)", "tf_kd", {}),
    ("adversarial", "adversarial", {}),
    ("byot (head on block1; no teacher)", "byot", {"stages": ["block1"], "final_stage": "block2"}),
    ("dml (2 peers, best exported; no teacher)", "dml", {}),
]


def build_student(method: str, data: Dataset, seed: int) -> torch.nn.Module:
    """The student; for deep mutual learning a group of peers (seeds seed, seed + 1, ...)."""
    if method != "dml":
        return build(STUDENT, data, seed)
    return PeerGroup([build(STUDENT, data, seed + k) for k in range(2)])


def student_accuracy(student: torch.nn.Module, data: Dataset) -> float:
    """Validation accuracy; of the best peer for a peer group (the one a dml job exports)."""
    peers = student.peers if isinstance(student, PeerGroup) else [student]
    return max(accuracy(p, data.x_val, data.y_val) for p in peers)


def build(spec: dict[str, Any], data: Dataset, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec["arch"], data.input_shape, data.num_classes, channels=spec["channels"])


def train_spec(epochs: int, seed: int) -> TrainSpec:
    return TrainSpec(
        epochs=epochs,
        batch_size=64,
        seed=seed,
        device="cpu",
        optimizer={"name": "adam", "lr": 0.003},
        scheduler={"name": "cosine"},
    )


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def run_setting(
    name: str, labeled: float, seeds: int, epochs: int, only: set[str] | None
) -> tuple[str, list[str]]:
    """(one line describing the setting, the table rows)."""
    data = load_data(DataSpec(source="digits", labeled_fraction=labeled))
    full = data if data.y_train_all is None else dataclasses.replace(data, y_train=data.y_train_all)
    teacher = build(TEACHER, data, 0)
    fit(
        teacher,
        registry.build("ce"),
        StageContext(name="teacher", data=full, train=train_spec(epochs, 0)),
    )
    freeze(teacher)
    t_acc = accuracy(teacher, data.x_val, data.y_val)
    results: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for label, method, params in METHODS:
        if only and method not in only | {"ce", "kd"}:
            continue
        for seed in range(seeds):
            student = build_student(method, data, seed)
            started = time.perf_counter()
            fit(
                student,
                registry.build(method, params),
                StageContext(
                    name=label, data=data, train=train_spec(epochs, seed), teacher=Teaching(teacher)
                ),
            )
            seconds.setdefault(label, []).append(time.perf_counter() - started)
            results.setdefault(label, []).append(student_accuracy(student, data))
        print(f"  {name}: {label} {mean_std(results[label])}", flush=True)
    scratch = results["scratch (CE only)"]
    kd = results["kd"]
    rows = []
    for label, accs in results.items():
        gap = [t_acc - a for a in accs]
        vs_scratch = [a - b for a, b in zip(accs, scratch, strict=True)]
        vs_kd = [a - b for a, b in zip(accs, kd, strict=True)]
        rows.append(
            f"| {name} | {label} | {mean_std(accs)} | {mean_std(gap)} | "
            f"{mean_std(vs_scratch)} | {mean_std(vs_kd)} | {statistics.mean(seconds[label]):.1f} |"
        )
    about = (
        f"- {name}: teacher {t_acc:.2f}% ({count_params(teacher):,} parameters), student "
        f"{count_params(build(STUDENT, data, 0)):,} parameters; {data.n_labeled} of "
        f"{len(data.x_train)} training rows labelled for the student; {len(data.x_val)} "
        f"validation rows; {epochs} epochs; {seeds} seeds"
    )
    return about, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="*", help="only these (plus scratch and kd)")
    args = parser.parse_args()
    started = time.perf_counter()
    only = set(args.methods) if args.methods else None
    done = [run_setting(n, SETTINGS[n], args.seeds, args.epochs, only) for n in args.settings]
    print()
    for about, _ in done:
        print(about)
    print(
        "\n| setting | method | student acc % | gap to teacher | vs scratch | vs kd | s/run |\n"
        "|---|---|---|---|---|---|---|"
    )
    for _, rows in done:
        print("\n".join(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
