"""Computed event fields: fields added to each event from an expression over its other fields,
before any feature sees it (``docs/features.md#computed-fields``).

The expressions are those of derived features (``runtime._spec.expressions``); their names are
event fields. The fields are computed in order when an event is ingested, each able to read
the fields computed before it, so every feature, condition and join sees them as it sees the
fields the event came with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import msgspec

from .._exceptions import FeaturistError, InvalidEvent
from .checks import SpecMeta, check_name, fail, kind
from .expressions import ExpressionError
from .keyed import parse_expression

__all__ = ["Computed", "computer"]


class Computed(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    metaclass=SpecMeta,
):
    """An event field computed from the event's other fields: ``name`` gets the value of the
    expression ``expr`` (``"amount * rate"``), before any feature sees the event.

    Its names are event fields, or fields computed before it in ``FeatureSet.computed``. A
    missing input gives ``None`` (the field is then missing for the features, which skip it);
    an input of the wrong type refuses the event (``InvalidEvent`` naming the field, in
    ``rt.dead_letters``).
    """

    name: str
    expr: str

    def __post_init__(self) -> None:
        check_name(self, "name", self.name)
        if not isinstance(self.expr, str):
            fail(self, "expr", f"expected an expression, got {kind(self.expr)}")
        try:
            expression = parse_expression(self.expr)
        except ExpressionError as exc:
            fail(self, "expr", f"{exc}: {self.expr[:200]!r}")
        if not expression.names:
            fail(self, "expr", f"reads no field: {self.expr[:200]!r}")
        if self.name in expression.names:
            fail(self, "expr", f"a computed field cannot read itself: {self.expr[:200]!r}")

    def inputs(self) -> tuple[str, ...]:
        """The fields the expression reads."""
        return parse_expression(self.expr).names


def computer(computed: Sequence[Computed]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The function ``compute(event, payload)`` that returns a copy of ``event`` (a dict) with
    the computed fields set; ``payload`` is what an error carries.

    Computing twice gives the same event: a field's expression reads no field computed after
    it (``FeatureSet`` checks that), so the router may compute an event again on its slow path.

    Raises (from ``compute``):
        InvalidEvent: an input of the wrong type, naming the computed field and the problem.
    """
    # One function for the list, compiled once: field names enter the source only as
    # ``repr`` of a ``str`` (a string literal), and each expression is its own compiled
    # function, bound under a generated name; user text never becomes source.
    namespace: dict[str, Any] = {"_fail": _fail}
    lines = ["def compute(event, payload):", "    out = dict(event)", "    get = out.get"]
    for index, field in enumerate(computed):
        expression = parse_expression(field.expr)
        namespace[f"_e{index}"] = expression.function
        args = ", ".join(f"get({name!r})" for name in expression.names)
        lines += [
            "    try:",
            f"        out[{field.name!r}] = _e{index}({args})",
            # any error of one event's values (a comparison that raises, say) refuses that
            # event, naming the field: ingest goes on
            "    except Exception as exc:",
            f"        _fail({field.name!r}, exc, payload)",
        ]
    lines.append("    return out")
    exec(compile("\n".join(lines) + "\n", "<featurist computed fields>", "exec"), namespace)
    compute: Callable[[dict[str, Any], Any], dict[str, Any]] = namespace["compute"]
    return compute


def _fail(name: str, error: Exception, payload: Any) -> NoReturn:
    reason = str(error) if isinstance(error, FeaturistError) else f"{type(error).__name__}: {error}"
    raise InvalidEvent(f"computed field {name!r}: {reason}", field=name, payload=payload) from error
