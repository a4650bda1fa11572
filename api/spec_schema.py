"""The request body of POST /v1/jobs as JSON Schema: `JobSpec`'s own schema, made to describe
the specs this service accepts, so that a client generated from the document, or a fuzzer,
sends specs that get a 201.

The engine's `JobSpec` takes any string as an architecture or method and checks the names in
`parse_spec` (it must import without torch, and plugins register more). Here the registries,
read once per app when the document is first built, fill in what the models cannot say:

- `Architecture`: the zoo's names, wherever a spec names an architecture;
- `MethodSpec`: one variant per method, with that method's keys (api/method_schemas.py);
- who teaches: `JobSpec` is a oneOf of one `teacher`, several `teachers`, or none for a
  method setting that trains its own teacher (GPD's scratch, finetune); each teacher is a
  oneOf of its four sources (train or checkpoint with an architecture; torchscript; onnx);
- file fields as `upload:<id>` (student.checkpoint also `job:<id>`): a spec sent to the
  service never names a path on the server; `train.max_runtime_s` up to the service's limit.

Checks across fields that only code can make (scheme conflicts such as dml with assistants,
sizes, whether an upload exists) stay in `parse_spec` and the submission check.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from api.method_schemas import REF, method_schemas
from kdcore.spec import JobSpec

NULL = {"type": "null"}
TEACHER_SOURCES = ("train", "checkpoint", "torchscript", "onnx")
BUILTIN_DATA = ["digits", "synthetic"]

#: A spec the service accepts as it is (README's first example): shown by the docs, and the
#: first body a fuzzer sends.
EXAMPLE: dict[str, Any] = {
    "name": "digits-mlp-kd",
    "teacher": {"arch": "mlp", "kwargs": {"hidden": [256, 256]}, "train": {"epochs": 30}},
    "student": {"arch": "mlp", "kwargs": {"hidden": [32]}},
    "data": {"source": "digits", "labeled_fraction": 0.1},
    "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
    "train": {"epochs": 40, "batch_size": 128, "optimizer": {"name": "adam", "lr": 0.001}},
    "evaluate": {"baseline": True},
    "export": ["torchscript", "onnx", "safetensors"],
    "gates": {"max_gap": 3.0},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema without its null branch (pydantic writes anyOf [x, null])."""
    branches = [b for b in prop.get("anyOf", [prop]) if b != NULL]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _object(title: str, props: dict[str, Any], required: list[str], **extra: Any) -> dict:
    return {
        "type": "object",
        "title": title,
        "properties": props,
        "required": required,
        "additionalProperties": False,
        **extra,
    }


def teacher_variants(schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`prefix` (TeacherSpec or TeacherEntry) as a oneOf of its four sources, each variant
    holding what that source allows (an architecture only where the file has none)."""
    props = schema["properties"]
    common = {k: v for k, v in props.items() if k not in (*TEACHER_SOURCES, "arch", "kwargs")}
    names = []
    out: dict[str, Any] = {}
    for source in TEACHER_SOURCES:
        p = {**common, **{other: NULL for other in TEACHER_SOURCES if other != source}}
        if source in ("train", "checkpoint"):
            p.update(arch=_ref("Architecture"), kwargs=props["kwargs"])
            required = ["arch", source]
            if source == "train":  # trained on what the student sees
                inputs = props["inputs"]
                p["inputs"] = {
                    **inputs,
                    "anyOf": [{"type": "string", "enum": ["normalized"]}, NULL],
                }
        else:  # the file carries its architecture; BatchNorm's train mode needs one
            p.update(arch=NULL, kwargs={"type": "object", "maxProperties": 0})
            p["mode"] = {**props["mode"], "enum": ["eval"]}
            required = [source]
        p[source] = _non_null(props["train"]) if source == "train" else _ref("UploadRef")
        name = f"{prefix}{source.capitalize()}"
        out[name] = _object(f"{prefix} ({source})", p, required)
        names.append(name)
    out[prefix] = {"oneOf": [_ref(n) for n in names], "description": schema.get("description")}
    return out


def _field_fixes(schemas: dict[str, Any], max_runtime_s: int) -> None:
    """Architectures by name, files by upload, the runtime cap, webhooks over HTTP(S)."""
    for model in ("StudentSpec", "AssistantSpec"):
        schemas[model]["properties"]["arch"] = _ref("Architecture")
    student = schemas["StudentSpec"]["properties"]
    student["checkpoint"] = {
        "anyOf": [{"type": "string", "pattern": r"^(upload|job):\S+$"}, NULL],
        "default": None,
        "description": "starting weights: upload:<id> (a state dict or safetensors file), or "
        "job:<id> (a succeeded job's safetensors student)",
    }
    data = schemas["DataSpec"]["properties"]
    data["source"] = {
        "anyOf": [{"type": "string", "enum": BUILTIN_DATA}, _ref("UploadRef")],
        "description": "a built-in set (digits, synthetic) or an uploaded dataset: upload:<id>",
    }
    schemas["TrainSpec"]["properties"]["max_runtime_s"]["maximum"] = max_runtime_s
    webhook = schemas["NotifySpec"]["properties"]["webhook_url"]["anyOf"][0]
    webhook["pattern"] = "^https?://"


def _job_variants(base: dict[str, Any], own_teacher: bool) -> dict[str, Any]:
    """`JobSpec` as a oneOf over who teaches: one teacher, several, or (for a method setting
    that trains its own) none."""
    props, required = base["properties"], list(base.get("required", []))
    teachers = {
        **_non_null(props["teachers"]),
        "items": _ref("TeacherEntry"),
        "description": props["teachers"].get("description"),
    }
    variants = {
        "JobSpecOneTeacher": _object(
            "one teacher",
            {**props, "teacher": _ref("TeacherSpec"), "teachers": NULL, "multi_teacher": NULL},
            [*required, "teacher"],
        ),
        "JobSpecTeachers": _object(
            "several teachers",
            {**props, "teacher": NULL, "teachers": teachers},
            [*required, "teachers"],
        ),
    }
    if own_teacher:
        variants["JobSpecOwnTeacher"] = _object(
            "no teacher: the method trains its own",
            {
                **props,
                "teacher": NULL,
                "teachers": NULL,
                "multi_teacher": NULL,
                "method": _ref("MethodOwnTeacher"),
            },
            [*required, "method"],
        )
    return {
        **variants,
        "JobSpec": {
            "oneOf": [_ref(n) for n in variants],
            "title": "JobSpec",
            "description": "a job spec, as `distill run` takes it (docs: README, "
            "docs/methods.md); who teaches: `teacher` (one), `teachers` (several, see "
            "`multi_teacher`), or none for a method that trains its own (GPD's scratch and "
            "finetune scenarios)",
        },
    }


def spec_schemas(
    archs: list[str], methods: Mapping[str, type[BaseModel]], max_runtime_s: int
) -> dict[str, Any]:
    """The components that describe the submit body (`JobSpec` and what it refers to)."""
    base = copy.deepcopy(JobSpec.model_json_schema(ref_template=REF))
    schemas: dict[str, Any] = base.pop("$defs")
    schemas["Architecture"] = {
        "type": "string",
        "enum": archs,
        "description": "a zoo architecture (`distill zoo` lists them with their kwargs)",
    }
    schemas["UploadRef"] = {
        "type": "string",
        "pattern": r"^upload:\S+$",
        "description": "a file uploaded to this service: upload:<id> (POST /v1/uploads)",
    }
    _field_fixes(schemas, max_runtime_s)
    schemas.update(teacher_variants(schemas.pop("TeacherSpec"), "TeacherSpec"))
    schemas.update(teacher_variants(schemas.pop("TeacherEntry"), "TeacherEntry"))
    found = method_schemas(methods)
    schemas.update(found.components)
    schemas.update(_job_variants(base, own_teacher=bool(found.own_teacher)))
    return schemas


def registry_spec_schemas(max_runtime_s: int) -> dict[str, Any]:
    """`spec_schemas` with the engine's registries (importing them imports torch)."""
    from kdcore.methods import registry as methods
    from kdcore.models import registry as models

    params = {name: methods.get(name).params for name in methods.names()}
    return spec_schemas(models.names(), params, max_runtime_s)
