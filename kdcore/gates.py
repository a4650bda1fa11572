"""Quality gates: the pass/fail checks a CI pipeline relies on."""

from __future__ import annotations

from kdcore.spec import GatesSpec


def check_gates(gates: GatesSpec, gap: float, student_accuracy: float) -> dict:
    """Every configured check with its threshold, measured value and verdict. `gap` is the
    teacher's accuracy minus the student's (for a GPD job without a static teacher, its dynamic
    teacher's: the report's `gap_reference`)."""
    checks = []
    if gates.max_gap is not None:
        checks.append(
            {
                "name": "max_gap",
                "threshold": gates.max_gap,
                "value": round(gap, 4),
                "passed": gap <= gates.max_gap,
            }
        )
    if gates.min_student_accuracy is not None:
        checks.append(
            {
                "name": "min_student_accuracy",
                "threshold": gates.min_student_accuracy,
                "value": round(student_accuracy, 4),
                "passed": student_accuracy >= gates.min_student_accuracy,
            }
        )
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
