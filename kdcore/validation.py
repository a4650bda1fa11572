"""`parse_spec`: every check that needs no model, in one place, run by the API at submit, by
`distill validate` / `distill run` before anything trains, and by the worker.

Beyond the shape (kdcore.spec): the method exists and its keys are valid, who teaches, the
architectures exist, and every scheme the spec uses accepts it (`Scheme.validate`: DML or GPD
with assistants, GPD's finetune without a checkpoint, ...), and the sizes: the data's, and the
models' against the budget when the spec fixes the data's shape (kdcore/budget.py, estimated on
the meta device, nothing allocated). Checks that need the built model
(layer names, whether GPD can expand it) run in the worker before any training
(`Scheme.check`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdcore.limits import DEFAULT_LIMITS, Limits
from kdcore.spec import JobSpec, SpecError, resolve_paths, spec_errors

# The registries (methods, architectures, schemes) are imported where they are used: they import
# torch, and importing this module must not (`uvicorn api.main:app` starts without it).


def parse_spec(data: Any, limits: Limits = DEFAULT_LIMITS) -> JobSpec:
    """Validate a spec given as a dict; raise `SpecError` naming each bad field. `limits` is
    the budget its models are held to when the data's shape is known (kdcore/budget.py)."""
    if errors := non_finite_numbers(data):  # also in kwargs and method keys, typed Any
        raise SpecError(errors)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(spec_errors(exc)) from None
    from kdcore.schemes import registry as schemes

    errors = _method_errors(spec)
    method_ok = not errors
    errors += _teacher_errors(spec, method_ok and _teacher_free(spec))
    errors += _arch_errors(spec)
    if method_ok:  # which schemes apply depends on the method
        for scheme in schemes.active(spec):
            errors += scheme.validate(spec)
    if not errors:  # sizes last: estimating the models needs a spec that is otherwise valid
        from kdcore.budget import spec_size_errors

        errors = spec_size_errors(spec, limits)
    if errors:
        raise SpecError(errors)
    return spec


def non_finite_numbers(data: Any) -> list[tuple[str, str]]:
    """(field path, message) for every NaN or ±Infinity in `data` (JSON-like: dicts, lists,
    scalars). JSON has no such numbers, yet Python's parser reads `NaN`, `Infinity` and `1e999`
    and YAML `.nan`/`.inf`; every number of a spec must be finite, `kwargs` included. Walks
    without recursion, so any nesting depth is safe."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            spelled = "NaN" if math.isnan(node) else ("-Infinity" if node < 0 else "Infinity")
            loc = ".".join(map(str, path)) or "(root)"
            found.append((loc, f"{spelled} is not a finite number; give a finite one"))
        elif isinstance(node, dict):
            stack.extend(((*path, k), v) for k, v in reversed(node.items()))
        elif isinstance(node, list | tuple):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(node))))
    return found


def load_spec(path: str | Path) -> JobSpec:
    """Read a YAML or JSON spec file; relative file paths inside it resolve from its folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([("(file)", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SpecError([("(file)", f"{path} is not valid YAML/JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise SpecError([("(root)", "a spec is a mapping with name, teacher, student, data, ...")])
    return resolve_paths(parse_spec(data), path.parent)


def _method_errors(spec: JobSpec) -> list[tuple[str, str]]:
    from kdcore.methods import registry as methods

    if spec.method.name not in methods.names():
        known = ", ".join(methods.names())
        return [("method.name", f"{spec.method.name!r} is not a known method; known: {known}")]
    try:
        methods.build(spec.method.name, spec.method.model_extra)
    except ValidationError as exc:
        return spec_errors(exc, ("method",))
    return []


def _teacher_free(spec: JobSpec) -> bool:
    return teacher_free(spec.method.name, spec.method.model_extra)


def teacher_free(method_name: str, params: dict[str, Any] | None) -> bool:
    """The method, with these keys, trains a teacher of its own and needs no other (GPD's
    scratch, finetune): the spec must then name no teacher. Also used by the API's schema."""
    from kdcore.methods import registry as methods

    method = methods.build(method_name, params)
    return method.trains_own_teacher and not method.needs_teacher


def _arch_errors(spec: JobSpec) -> list[tuple[str, str]]:
    from kdcore.models import registry as models

    archs: list[tuple[str, str | None]] = [("student.arch", spec.student.arch)]
    if spec.teacher is not None:
        archs.insert(0, ("teacher.arch", spec.teacher.arch))
    archs += [(f"teachers.{i}.arch", t.arch) for i, t in enumerate(spec.teachers or [])]
    archs += [(f"assistants.{i}.arch", a.arch) for i, a in enumerate(spec.assistants)]
    known = models.names()
    return [
        (loc, f"{arch!r} is not a known architecture; known: {', '.join(known)}")
        for loc, arch in archs
        if arch is not None and arch not in known
    ]


def _teacher_errors(spec: JobSpec, teacher_free: bool = False) -> list[tuple[str, str]]:
    """Who teaches: exactly one of teacher / teachers; none for a method that trains its own
    teacher and needs no other (`teacher_free`: GPD's scratch and finetune scenarios)."""
    errors: list[tuple[str, str]] = []
    if teacher_free:
        for field in ("teacher", "teachers"):
            if getattr(spec, field) is not None:
                errors.append(
                    (
                        field,
                        f"method {spec.method.name} with this scenario uses no static teacher; "
                        "remove it, or set method.scenario: teacher",
                    )
                )
        return errors
    if spec.teacher is not None and spec.teachers is not None:
        errors.append(("teachers", "give either teacher (one) or teachers (several), not both"))
    if spec.multi_teacher is not None and spec.teachers is None:
        errors.append(("multi_teacher", "only used with teachers (a list of several teachers)"))
    if spec.teachers is not None and spec.multi_teacher is not None:
        index = spec.multi_teacher.feature_teacher
        if index >= len(spec.teachers):
            errors.append(
                (
                    "multi_teacher.feature_teacher",
                    f"{index} is not an index of teachers (0..{len(spec.teachers) - 1})",
                )
            )
    if spec.teacher is None and spec.teachers is None:
        # Methods that need no teacher but train none of their own (tf_kd, dml, byot) still
        # take one: the report's gap, the gates and the service's evaluation are measured to it.
        errors.append(
            ("teacher", "required field is missing; give teacher (one) or teachers (several)")
        )
    return errors
