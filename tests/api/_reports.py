"""Reports for jobs written straight to the store: the smallest valid `kdcore.report.Report`,
with any section replaced (what a worker would have stored)."""

from __future__ import annotations

from typing import Any

from kdcore.report import Report

STUDENT = {
    "arch": "mlp",
    "accuracy": 96.0,
    "params": 100,
    "size_bytes": 400,
    "latency_ms": 0.1,
    "best_accuracy": 96.0,
}


def make_report(**fields: Any) -> Report:
    base: dict[str, Any] = {
        "name": "stored",
        "method": {"name": "kd"},
        "student": STUDENT,
        "gap": 0.0,
        "gates": {"passed": True, "checks": []},
        "data": {
            "name": "digits",
            "input_shape": [64],
            "num_classes": 10,
            "n_train": 8,
            "n_labeled": 8,
            "n_val": 4,
        },
    }
    return Report.model_validate({**base, **fields})
