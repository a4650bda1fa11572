"""The `method` of a spec as JSON Schema: one variant per registered method, read from the
registry when the OpenAPI document is built.

The engine's `MethodSpec` is `name` plus any keys (it checks them against the method's params
model in `parse_spec`), which tells a client nothing. Here each method is an object whose
`name` is a const and whose other keys are its params model's; the variants together are a
oneOf tagged by `name` (the default method's `name` may be left out, as the engine allows).

Who teaches depends on the method's keys: GPD with `scenario: scratch` or `finetune` trains its
own teacher and must have none in the spec. Such a setting is found by trying each value of
each enum-typed key (`kdcore.validation.teacher_free`, the rule `parse_spec` applies), and
the method is split in two variants: one for specs with a teacher (`MethodSpec`), one for
specs without (`MethodOwnTeacher`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from kdcore.spec import MethodSpec
from kdcore.validation import teacher_free

REF = "#/components/schemas/{model}"


@dataclass
class MethodSchemas:
    """Component schemas, and which of them describe methods with or without a teacher."""

    components: dict[str, Any] = field(default_factory=dict)
    with_teacher: list[str] = field(default_factory=list)
    own_teacher: list[str] = field(default_factory=list)

    def unions(self) -> dict[str, Any]:
        """`MethodSpec` (specs with teachers) and `MethodOwnTeacher` (without), as oneOfs."""
        out = {
            "MethodSpec": {
                "oneOf": [_ref(n) for n in self.with_teacher],
                "description": "the distillation method: `name` and that method's own keys "
                "(docs/methods.md); default kd",
            }
        }
        if self.own_teacher:
            out["MethodOwnTeacher"] = {
                "oneOf": [_ref(n) for n in self.own_teacher],
                "description": "a method setting that trains its own teacher (the spec then "
                "names no teacher)",
            }
        return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def variant(name: str, params: type[BaseModel], default_name: str) -> dict[str, Any]:
    """One method as an object schema: `name` const (optional for the default method)."""
    schema = params.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)  # params models nest no models today; refs would dangle
    required = list(schema.get("required", []))
    if name != default_name:
        required.insert(0, "name")
    out: dict[str, Any] = {
        "type": "object",
        "title": f"method {name}",
        "properties": {"name": {"type": "string", "const": name}, **schema["properties"]},
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def _free(name: str, params: dict[str, Any] | None) -> bool:
    try:
        return teacher_free(name, params)
    except ValueError:  # a value these keys cannot take alone: not a setting to offer
        return False


def teacher_switch(name: str, schema: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """(key, values) such that the method with `key` in `values` trains its own teacher and
    with any other value needs one; None when no single key decides that."""
    if _free(name, None):
        return None
    for key, prop in schema["properties"].items():
        values = prop.get("enum")
        if key == "name" or not values:
            continue
        free = [v for v in values if _free(name, {key: v})]
        if free and len(free) < len(values):
            return key, free
    return None


def restricted(schema: dict[str, Any], key: str, values: list[Any], *, keep: bool) -> dict:
    """`schema` with `key` limited to `values` (keep) or to every other value (not keep);
    the key becomes required when its default is no longer allowed."""
    prop = dict(schema["properties"][key])
    allowed = [v for v in prop["enum"] if (v in values) == keep]
    prop["enum"] = allowed
    out = {**schema, "properties": {**schema["properties"], key: prop}}
    if prop.get("default") not in allowed:
        prop.pop("default", None)
        out["required"] = [*schema.get("required", []), key]
    return out


def method_schemas(methods: Mapping[str, type[BaseModel]]) -> MethodSchemas:
    """Every method's variants, from `methods` (name → params model, the registry's)."""
    default_name = MethodSpec().name
    out = MethodSchemas()
    for name, params in methods.items():
        schema = variant(name, params, default_name)
        component = f"{_camel(name)}Method"
        switch = teacher_switch(name, schema)
        if switch is None:
            out.components[component] = schema
            (out.own_teacher if _free(name, None) else out.with_teacher).append(component)
            continue
        key, free = switch
        out.components[component] = restricted(schema, key, free, keep=False)
        out.components[f"{component}OwnTeacher"] = restricted(schema, key, free, keep=True)
        out.with_teacher.append(component)
        out.own_teacher.append(f"{component}OwnTeacher")
    out.components.update(out.unions())
    return out
