"""Quality gates checked by the client, on the numbers of a finished job.

The spec's own `gates` are the starting point; `--max-gap` / `--min-accuracy` replace or add
to them. They are checked here, not sent to the server: the job and its spec stay the same
(so an Idempotency-Key retry with a stricter flag judges the same job again instead of being a
409), and the verdict uses exactly the rule the engine uses (kdcore.gates).
"""

from __future__ import annotations

from typing import Any

from kdcore.gates import check_gates
from kdcore.spec import GatesSpec


def effective_gates(
    spec: dict[str, Any], max_gap: float | None = None, min_accuracy: float | None = None
) -> GatesSpec:
    """The spec's gates with the command line's on top."""
    gates = dict(spec.get("gates") or {})
    if max_gap is not None:
        gates["max_gap"] = max_gap
    if min_accuracy is not None:
        gates["min_student_accuracy"] = min_accuracy
    return GatesSpec.model_validate(gates)


def describe(check: dict[str, Any]) -> str:
    """One line per check, e.g. `max_gap: gap 1.25 <= 3.0 (passed)`."""
    if check["name"] == "max_gap":
        what, op = "gap", "<=" if check["passed"] else ">"
    else:
        what, op = "student accuracy", ">=" if check["passed"] else "<"
    verdict = "passed" if check["passed"] else "FAILED"
    return f"{check['name']}: {what} {check['value']} {op} {check['threshold']} ({verdict})"


def judge(gates: GatesSpec, gap: float, student_accuracy: float) -> dict[str, Any]:
    """{"passed": bool, "checks": [{name, threshold, value, passed}, ...]}; `gap` is the job's
    (teacher − student, or dynamic teacher − student for a GPD job without a teacher)."""
    return check_gates(gates, gap, student_accuracy)
