"""Several distillation terms at once, e.g. KD on the logits plus attention transfer on features.

    method:
      name: combined
      ce_weight: 1.0
      terms:
        - {name: kd, weight: 1.0, temperature: 4}
        - {name: at, weight: 1.0, beta: 1000, student_layers: [layer2], teacher_layers: [layer2]}

    loss = ce_weight · CE(labelled rows) + Σ_i weight_i · distill_loss_i

Each term is a method of its own, checked against that method's keys (errors name
`method.terms.<i>.<key>`), contributing only its distillation term: cross-entropy is added once
here, so a term may not set the keys that weigh CE (`ce_weight`; `alpha` for kd). Combining
methods is common practice (e.g. CRD+KD, FitNets+KD in RepDistiller's tables); `weight` scales a
term on top of the method's own β/γ. The hooked layers are the union of the terms' layers, and
the terms' adapters train and are checkpointed as part of this method.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import Tensor, nn

from kdcore.methods import registry
from kdcore.methods._common import DistillTerm
from kdcore.methods.base import MethodParams, StepOutputs
from kdcore.methods.registry import register

NAME = "combined"


class _TermWeight(BaseModel):
    weight: float = Field(1.0, ge=0)


def _error(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(kind, message),
        loc=loc,
        input=value,
    )


def _nested(exc: ValidationError, prefix: tuple[str | int, ...]) -> list[InitErrorDetails]:
    """Re-home a term's validation errors under `terms.<i>`, keeping their kind and message."""
    return [
        _error(prefix + tuple(e["loc"]), e["type"], e["msg"], e.get("input")) for e in exc.errors()
    ]


def combinable() -> list[str]:
    """Methods that expose a distillation term of their own."""
    return [n for n in registry.names() if n != NAME and issubclass(registry.get(n), DistillTerm)]


def check_term(index: int, term: Any) -> tuple[dict[str, Any] | None, list[InitErrorDetails]]:
    """Validate one term; returns it with every default filled in, or the errors."""
    loc: tuple[str | int, ...] = ("terms", index)
    if not isinstance(term, dict):
        return None, [_error(loc, "dict_type", "a term is a mapping: {name: ..., ...}", term)]
    name = term.get("name")
    if name is None:
        return None, [_error((*loc, "name"), "missing", "required field is missing", term)]
    allowed = combinable()
    if name not in allowed:
        why = {
            "ce": "cross-entropy is added once, weighted by method.ce_weight",
            NAME: "combined terms cannot be nested; list every term here",
        }.get(str(name), "is not a known method")
        message = f"{name!r} cannot be a term: {why}; terms can be: {', '.join(allowed)}"
        return None, [_error((*loc, "name"), "value_error", message, name)]
    cls = registry.get(name)
    assert issubclass(cls, DistillTerm)
    errors = [
        _error(
            (*loc, key),
            "value_error",
            f"a combined term has no {key}: cross-entropy is added once, weighted by "
            f"method.ce_weight; scale this term with method.terms.{index}.weight",
            term[key],
        )
        for key in cls.ce_keys
        if key in term
    ]
    own = {k: v for k, v in term.items() if k not in ("name", "weight", *cls.ce_keys)}
    weight = 1.0
    try:
        weight = _TermWeight.model_validate({"weight": term.get("weight", 1.0)}).weight
    except ValidationError as exc:
        errors += _nested(exc, loc)
    try:
        params = cls.params.model_validate(own)
    except ValidationError as exc:
        errors += _nested(exc, loc)
    if errors:
        return None, errors
    return {"name": name, "weight": weight, **params.model_dump(exclude=set(cls.ce_keys))}, []


class CombinedParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="weight of cross-entropy on labelled rows")
    terms: list[dict[str, Any]] = Field(
        ..., min_length=1, description="distillation terms: {name, weight, <method's keys>}"
    )

    @model_validator(mode="wrap")
    @classmethod
    def _check_terms(cls, data: Any, handler: Any) -> CombinedParams:
        errors: list[InitErrorDetails] = []
        model: CombinedParams | None = None
        try:
            model = handler(data)
        except ValidationError as exc:
            errors += _nested(exc, ())
        if model is not None:
            raw: Any = model.terms
        else:
            raw = data.get("terms") if isinstance(data, dict) else None
        checked = []
        if isinstance(raw, list):
            for i, term in enumerate(raw):
                ok, errs = check_term(i, term)
                errors += errs
                checked.append(ok)
        if errors or model is None:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        model.terms = [t for t in checked if t is not None]
        return model


@register("combined")
class Combined(DistillTerm):
    params: ClassVar[type[MethodParams]] = CombinedParams
    hparams: CombinedParams

    def __init__(self, params: MethodParams):
        super().__init__(params)
        terms: list[DistillTerm] = []
        self.weights: list[float] = []
        for i, spec in enumerate(self.hparams.terms):
            cls = registry.get(spec["name"])
            own = {k: v for k, v in spec.items() if k not in ("name", "weight")}
            term = cls(cls.params.model_validate(own))
            assert isinstance(term, DistillTerm)
            term.field = f"method.terms.{i}"
            terms.append(term)
            self.weights.append(float(spec["weight"]))
        self.terms = nn.ModuleList(terms)

    def _terms(self) -> list[DistillTerm]:
        return list(self.terms)  # type: ignore[arg-type]

    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(n for t in self._terms() for n in t.student_layers()))

    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(n for t in self._terms() for n in t.teacher_layers()))

    def setup(
        self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]
    ) -> None:
        for term in self._terms():
            term.setup(student_features, teacher_features)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        super().start_epoch(epoch, epochs)
        for term in self._terms():
            term.start_epoch(epoch, epochs)

    def distill_loss(self, out: StepOutputs) -> Tensor:
        parts = [w * t.distill_loss(out) for w, t in zip(self.weights, self._terms(), strict=True)]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
