"""A JUnit XML report of `distill submit`, the format CI systems show as test results.

One test case per quality gate (`max_gap`, `min_student_accuracy`), in a suite named after the
job: a failed gate is a `<failure>`; when the job never produced numbers (it failed, was
cancelled, timed out, or was refused) each gate is an `<error>` saying why. With no gates at all
there is one case, `job`, so the report is never empty. Job facts go in `<properties>`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from client.gates import describe
from client.outcome import Outcome

CASES_WITHOUT_GATES = ("job",)


def report(outcome: Outcome, gate_names: list[str], server: str) -> ET.ElementTree:
    job = outcome.job
    name = job.name if job is not None else "distillery"
    checks = {c["name"]: c for c in (outcome.gates or {}).get("checks", [])}
    names = list(gate_names) or list(CASES_WITHOUT_GATES)
    suites = ET.Element("testsuites", name="distillery")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"distillery.{name}",
        tests=str(len(names)),
        time=f"{outcome.elapsed_s:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    facts = {"result": outcome.result, "exit_code": str(outcome.exit_code)}
    if job is not None:
        facts.update(job_id=job.id, status=job.status, url=f"{server}/v1/jobs/{job.id}")
        ev = job.evaluation
        if ev is not None:
            numbers = {
                "teacher_accuracy": ev.teacher_accuracy,
                "dynamic_teacher_accuracy": ev.dynamic_teacher_accuracy,
                "student_accuracy": ev.student_accuracy,
                "gap": ev.gap,
                "compression_ratio": ev.compression_ratio,
            }
            # a job without a (dynamic) teacher leaves its property out rather than say "None"
            facts.update({k: str(v) for k, v in numbers.items() if v is not None})
            facts["gap_reference"] = ev.gap_reference
    for key, value in facts.items():
        ET.SubElement(props, "property", name=key, value=value)

    failures = errors = 0
    for case_name in names:
        case = ET.SubElement(suite, "testcase", classname=f"distillery.{name}", name=case_name)
        check = checks.get(case_name)
        if check is not None:
            if not check["passed"]:
                failures += 1
                failure = ET.SubElement(case, "failure", message=describe(check), type="gate")
                failure.text = describe(check)
        elif outcome.result not in ("passed", "gate_failed"):
            errors += 1
            error = ET.SubElement(case, "error", message=outcome.message, type=outcome.result)
            error.text = "\n".join([outcome.message, *outcome.errors])
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suites.set("tests", str(len(names)))
    suites.set("failures", str(failures))
    suites.set("errors", str(errors))
    ET.indent(suites)
    return ET.ElementTree(suites)


def write(path: Path, outcome: Outcome, gate_names: list[str], server: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    report(outcome, gate_names, server).write(path, encoding="utf-8", xml_declaration=True)
