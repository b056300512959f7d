"""Compiling a group of features into one function that applies a batch of events.

Per-event work is the hot path of the runtime, so a feature group is not run as one object
per feature with a method call per event. Instead, each aggregate type contributes a few lines
of Python (its update, its value, its merge) over named *slots*, and the group is compiled once,
with ``exec``, into a function that loops over a batch and updates each key's state in place:
one dict lookup per event for the key, then straight-line code per feature. This is what
dataclasses and attrs do for ``__init__``; it keeps per-event work to plain Python on local
state. A user-defined aggregate (``custom``) is a kind made for its feature (``_custom_kind``):
one slot holding a cell made per key, which its update, value and merge lines hand to the
aggregate's runner (``runtime._keyed.custom``), one call each.

A key's state is one instance of a compiled ``__slots__`` class (fast attribute stores, 8 bytes
per slot). Its twin, an ``array_like`` ``msgspec.Struct`` with the same fields
(``record_type``), is what snapshots, checkpoints and tests use: ``to_record``/``from_record``
convert between them.

Safety of the generated code: user input never becomes source text. Field names and feature
names appear only through ``repr()`` of a ``str`` (a string literal), and every constant from a
``where`` condition is bound in the function's namespace under a generated name.

Semantics every aggregate shares:
- a missing or ``None`` value is skipped: the feature keeps its value (as SQL skips NULL);
- a value of the wrong type, NaN or an infinity is an error for that feature and that event
  only; the state is left as it was, and the other features of the event go on;
- a ``where`` condition selects the events a feature sees; a missing field matches nothing;
- order: a key's events are applied in arrival order (the same for any shard count or batch
  size); ``first``/``last``/``time_since``/``ewm_mean`` use event time, so they do not depend on
  arrival order except for ties (``last`` takes the later arrival, ``first`` the earlier);
- an exception that escapes the features' own guards (a bug, a ``RecursionError``, a value whose
  conversion raises something unexpected) makes the event a *poison* event: it is set aside
  with its exception and the batch goes on. Such failures come from reading the event's fields,
  before any feature: the key is left as it was, and a key state the event created is dropped.
  (Past that point only a feature's own error handling could fail: what the features before it
  applied would stay.)
"""

from __future__ import annotations

import contextlib
import itertools
import linecache
import re
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .._duration import parse_duration
from .._exceptions import SpecError
from .._stats.sketch import distinct_add, distinct_merge, distinct_value
from .custom import CustomRunner
from .kinds import (
    INF,
    KINDS,
    Kind,
    coerce_number,
    distinct_restore,
    exact_std,
    exact_variance,
    exp2,
    name_error,
    ratio_of,
    sqrt_pos,
    welford_of,
)

__all__ = ["CompiledGroup", "compile_group"]

#: numbers the compiled groups, so that each has a file name of its own in ``linecache``
_COMPILED = itertools.count(1)


def _tag(feature: Any) -> str:
    return str(feature.__struct_config__.tag)


#: the features computed from other features' values when read: no state, no update
_FROM_FEATURES = frozenset({"ratio", "derived"})


class _Fresh:
    """A slot's initial value made anew for each key by calling ``factory``."""

    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


def _custom_kind(runner: CustomRunner) -> Kind:
    """A user-defined aggregate as a kind: one slot holding its cell, made per key."""
    return Kind(
        (("c", _Fresh(runner.new_cell)),),
        "{p.step}({S.c}, v)",
        "{p.read}({S.c})",
        "{R.c} = {p.merged}({A.c}, {B.c})" if runner.merges else None,
        numeric=runner.numeric,
    )


@dataclass
class CompiledGroup:
    """A compiled feature group. Internal.

    ``apply(batch, states, errors, now)`` applies a batch of ``(key, time, event)`` to the
    states dict; errors are appended as
    ``(key, time, feature_name, exception)``. ``apply_emit(..., out)`` also appends
    ``(key, time, *values)`` per event to ``out`` (an ``UpdateBatch`` row), and records errors as
    ``(position_in_out, key, time, feature_name, exception)``. ``apply_timed(..., timings)``
    adds the nanoseconds spent in each feature to ``timings`` (for sampled latency), and
    ``apply_emit_timed(..., out, timings)`` does both. Errors are ``FeatureValueError``s naming
    the field (other exceptions are wrapped).

    Each takes a last argument ``poison``: a list that receives ``(key, time, event,
    exception)`` for each event whose processing raised past the features' own guards, the
    batch going on with the next event; with None (the default) that exception propagates.
    """

    names: tuple[str, ...]
    types: tuple[str, ...]
    #: the live per-key state: a compiled ``__slots__`` class
    state_type: type
    #: its record twin, an ``array_like`` msgspec Struct with the same fields, for snapshots
    record_type: type[msgspec.Struct]
    to_record: Callable[[Any], msgspec.Struct]
    from_record: Callable[[msgspec.Struct], Any]
    apply: Callable[..., None]
    apply_emit: Callable[..., None]
    apply_timed: Callable[..., None]
    apply_emit_timed: Callable[..., None]
    values: Callable[[Any], tuple[Any, ...]]
    merge: Callable[[Any, Any], Any] | None
    slot_count: int
    source: str
    #: per feature (in ``names`` order): its slot of each role (a slot may serve several
    #: features: ``mean`` reads ``sum``'s running total); a ratio has none
    feature_slots: tuple[dict[str, str], ...] = ()

    def new_state(self) -> Any:
        return self.state_type()


class _Builder:
    def __init__(self, features: Sequence[Any]) -> None:
        self.features = list(features)
        self.namespace: dict[str, Any] = {
            "_INF_": INF,
            "_coerce": coerce_number,
            "_ratio": ratio_of,
            "_wrap": name_error,
            "_sqrt_pos": sqrt_pos,
            "_exact_variance": exact_variance,
            "_exact_std": exact_std,
            "_welford_of": welford_of,
            "_exp2": exp2,
            "_distinct_add": distinct_add,
            "_distinct_value": distinct_value,
            "_distinct_merge": distinct_merge,
            "_distinct_restore": distinct_restore,
            "_pc": time.perf_counter_ns,
            "_poisoned": _poisoned,
        }
        # t_ is the key's greatest event time (-1 before any: event times are >= 0)
        self.slots: list[tuple[str, Any]] = [("t_", -1)]
        self.fields: dict[str, str] = {}  # event field -> local variable holding its value
        self.numeric_fields: set[str] = set()
        self.feature_slots: list[dict[str, str]] = []
        self.shared: dict[tuple[str, str, Any], str] = {}
        self.reused: list[set[str]] = []
        self.params: list[dict[str, str]] = []
        #: each feature's kind (None: a ratio or derived feature)
        self.kinds: list[Kind | None] = []
        self.names = tuple(f.name for f in self.features)
        self._constants = 0

    def constant(self, value: Any) -> str:
        name = f"_c{self._constants}"
        self._constants += 1
        self.namespace[name] = value
        return name

    def prepare(self) -> None:
        for index, feature in enumerate(self.features):
            tag = _tag(feature)
            if tag in _FROM_FEATURES:
                self.feature_slots.append({})
                self.params.append({})
                self.reused.append(set())
                self.kinds.append(None)
                continue
            params = {}
            if tag == "custom":
                runner = CustomRunner(feature)
                kind: Kind | None = _custom_kind(runner)
                params["step"] = self.constant(runner.step)
                params["read"] = self.constant(runner.read)
                params["merged"] = self.constant(runner.merged)
            else:
                kind = KINDS.get(tag)
            if kind is None:
                raise SpecError(
                    f"feature {feature.name!r}: type {tag!r} cannot run in a keyed group"
                )
            slots = {}
            families = dict(kind.share)
            reused: set[str] = set()
            for role, default in kind.slots:
                family = families.get(role)
                share_key = (family, feature.field, feature.where) if family else None
                if share_key is not None and share_key in self.shared:
                    slots[role] = self.shared[share_key]
                    reused.add(role)
                    continue
                slot = f"f{index}_{role}"
                slots[role] = slot
                self.slots.append((slot, default))
                if share_key is not None:
                    self.shared[share_key] = slot
            self.feature_slots.append(slots)
            self.reused.append(reused)
            self.kinds.append(kind)
            if tag in ("variance", "std"):
                params["ddof"] = self.constant(int(feature.ddof))
            if tag == "ewm_mean":
                params["half_life"] = self.constant(
                    float(parse_duration(feature.half_life, field="half_life"))
                )
            if tag == "distinct_count":
                params["exact_limit"] = self.constant(int(feature.exact_limit))
                params["precision"] = self.constant(int(feature.precision))
            self.params.append(params)
            if kind.field:
                field = feature.field
                if field not in self.fields:
                    self.fields[field] = f"v{len(self.fields)}"
                if kind.numeric:
                    self.numeric_fields.add(field)

    def render(self, template: str, index: int, **states: str) -> str:
        slots = self.feature_slots[index]
        params = self.params[index]
        out = template
        for prefix, var in states.items():
            for role, slot in slots.items():
                out = out.replace("{" + f"{prefix}.{role}" + "}", f"{var}.{slot}")
            every = ", ".join(f"{var}.{slots[role]}" for role in slots)
            out = out.replace("{" + f"{prefix}.ALL" + "}", f"({every})")
        for name, const in params.items():
            out = out.replace("{p." + name + "}", const)
        return out

    def value_expr(self, index: int, var: str) -> str:
        """A feature's value from state ``var``; a ratio divides the locals ``x<i>`` that
        :meth:`values_lines` computes for its operands first."""
        feature = self.features[index]
        tag = _tag(feature)
        if tag == "ratio":
            num = self.names.index(feature.numerator)
            den = self.names.index(feature.denominator)
            return f"_ratio(x{num}, x{den})"
        if tag == "derived":
            args = ", ".join(f"x{self.names.index(name)}" for name in feature.depends_on())
            return f"{self.constant(feature.combiner())}({args})"
        kind = self.kinds[index]
        assert kind is not None
        return self.render(kind.value, index, S=var)

    def input_of(self, feature: Any) -> str:
        if _tag(feature) == "ratio":
            return f"{feature.numerator}/{feature.denominator}"
        if _tag(feature) == "derived":
            return str(feature.name)
        field = getattr(feature, "field", None)
        if field is None and feature.where is not None:
            field = feature.where.field
        return str(field) if field is not None else str(feature.name)

    def value_order(self) -> list[int]:
        """Feature indexes with every ratio and derived feature after its operands."""
        order = [i for i, f in enumerate(self.features) if _tag(f) not in _FROM_FEATURES]
        done = set(order)
        ratios = [i for i, f in enumerate(self.features) if _tag(f) in _FROM_FEATURES]
        while ratios:
            for i in list(ratios):
                f = self.features[i]
                needs = {self.names.index(name) for name in f.depends_on()}
                if needs <= done:
                    order.append(i)
                    done.add(i)
                    ratios.remove(i)
        return order

    def values_lines(self, on_error: str | None) -> list[str]:
        """Statements computing ``x<i>`` for every feature from state ``S``. A value that raises
        becomes None, and ``on_error`` (a format string with ``{name}`` and ``{exc}``) records
        it."""
        lines = []
        for index in self.value_order():
            feature = self.features[index]
            expr = self.value_expr(index, "S")
            kind = self.kinds[index]
            if kind is not None and kind.safe_value:
                lines.append(f"x{index} = {expr}")
                continue
            lines += ["try:", f"    x{index} = {expr}", "except Exception as _exc:"]
            lines.append(f"    x{index} = None")
            if on_error is not None:
                wrapped = f"_wrap(_exc, {self.input_of(feature)!r})"
                lines.append("    " + on_error.format(name=repr(str(feature.name)), exc=wrapped))
        return lines

    def where_expr(self, where: Any) -> str:
        field = repr(str(where.field))
        op = where.op
        if op in ("in", "not_in"):
            values = list(where.value)
            try:
                const = self.constant(frozenset(values))
            except TypeError:
                const = self.constant(tuple(values))
            if op == "in":
                return f"ev.get({field}) in {const}"
            return f"((_x := ev.get({field})) is not None and _x not in {const})"
        const = self.constant(where.value)
        if op == "==":
            return f"ev.get({field}) == {const}"
        return f"((_x := ev.get({field})) is not None and _x {op} {const})"

    def extraction(self) -> list[str]:
        """Read each field once per event: ``vN`` raw, and for numeric features ``nN`` (an
        ``int`` or finite ``float``, or ``None``) with ``enN`` the error explaining a bad value."""
        lines = []
        for field, var in self.fields.items():
            name = repr(str(field))
            lines.append(f"{var} = ev.get({name})")
            if field in self.numeric_fields:
                num = "n" + var
                lines += [
                    f"{num} = {var}",
                    f"e{num} = None",
                    f"if {num} is not None:",
                    f"    if {num}.__class__ is float:",
                    f"        if not -_INF < {num} < _INF:",
                    f"            {num}, e{num} = _coerce({name}, {num})",
                    f"    elif {num}.__class__ is not int:",
                    f"        {num}, e{num} = _coerce({name}, {num})",
                ]
        return lines

    def _shared_line(self, line: str, index: int) -> bool:
        """True for an update line that only touches slots another feature already updates."""
        roles = set(re.findall(r"\{S\.(\w+)\}", line))
        reused = self.reused[index]
        return bool(reused) and bool(roles) and roles <= reused

    def feature_block(self, index: int, timed: bool, emit: bool) -> list[str]:
        feature = self.features[index]
        tag = _tag(feature)
        if tag in _FROM_FEATURES:
            return []
        kind = self.kinds[index]
        assert kind is not None
        name = repr(str(feature.name))
        body: list[str] = []
        reused = self.reused[index]
        if reused and reused >= {role for role, _ in kind.slots}:
            # another feature updates every slot (a std beside a variance): nothing to do,
            # and a multi-line update (Welford's) cannot be filtered line by line
            update = ["pass"]
        else:
            update = [
                self.render(line, index, S="S")
                for line in kind.update.splitlines()
                if not self._shared_line(line, index)
            ] or ["pass"]
        if kind.field:
            var = self.fields[feature.field]
            if kind.numeric:
                var = "n" + var
            body.append(f"if {var} is not None:")
            body.extend("    " + re.sub(r"\bv\b", var, line) for line in update)
            if kind.numeric:
                body.append(f"elif e{var} is not None:")
                body.append(f"    raise e{var}")
        else:
            body.extend(update)
        if feature.where is not None:
            # a value the condition cannot test (a str against a number for ``<``, a list for
            # ``in``) is the same error as for a windowed feature: ``Where.mismatch`` builds it.
            # The inner try costs nothing while nothing raises.
            where = self.constant(feature.where)
            body = [
                "try:",
                f"    _w = {self.where_expr(feature.where)}",
                "except TypeError as _exc:",
                f"    raise {where}.mismatch(ev.get({str(feature.where.field)!r}), _exc) from _exc",
                "if _w:",
                *("    " + line for line in body),
            ]
        lines = ["try:"] + ["    " + line for line in body]
        record = "(len(out), key, t" if emit else "(key, t"
        wrapped = f"_wrap(_exc, {self.input_of(feature)!r})"
        lines += ["except Exception as _exc:", f"    errors.append({record}, {name}, {wrapped}))"]
        if timed:
            lines = ["_p0 = _pc()", *lines, f"timings[{index}] += _pc() - _p0"]
        return lines

    def apply_source(self, fn: str, emit: bool, timed: bool) -> str:
        """One variant of the batch function. Each event's body runs in a ``try`` (free on
        Python 3.11 when nothing raises): what escapes the features' own guards makes the
        event a poison event (``_poisoned``), and the loop goes on. The key's time ``t_`` is
        set once the event's fields are read, where such failures come from: one there leaves
        a new key's ``t_`` at -1. (Set after the features, it would cost a jump per event.)"""
        args = "batch, states, errors, now"
        if emit:
            args += ", out"
        if timed:
            args += ", timings"
        lines = [
            f"def {fn}({args}, poison=None):",
            "    new = _State",
            "    _INF = _INF_",
            "    get = states.get",
            "    for key, t, ev in batch:",
            "        try:",
            "            S = get(key)",
            "            if S is None:",
            "                S = states[key] = new()",
        ]
        inner = self.extraction()
        inner += ["if t > S.t_:", "    S.t_ = t"]
        for index in range(len(self.features)):
            inner += self.feature_block(index, timed, emit)
        if emit:
            inner += self.values_lines("errors.append((len(out), key, t, {name}, {exc}))")
            values = "".join(f", x{i}" for i in range(len(self.features)))
            inner.append(f"out.append((key, t{values}))")
        lines += ["            " + line for line in inner]
        position = "len(out)" if emit else "None"
        lines += [
            "        except Exception as _exc:",
            "            if poison is None:",
            "                raise",
            f"            _poisoned(states, key, t, ev, _exc, poison, errors, {position})",
        ]
        return "\n".join(lines)

    def state_class_source(self, name: str) -> str:
        """The live state: a ``__slots__`` class. A msgspec Struct would do, but its attribute
        stores go through a custom ``__setattr__`` and cost about ten times a slot store, which
        was a third of the kernel's time; the Struct twin is kept for snapshots."""
        fields = ", ".join(repr(slot) for slot, _ in self.slots)
        lines = [f"class {name}:", f"    __slots__ = ({fields},)", "    def __init__(self):"]
        for slot, default in self.slots:
            if isinstance(default, _Fresh):
                lines.append(f"        self.{slot} = {self.constant(default.factory)}()")
            else:
                lines.append(f"        self.{slot} = {self.constant(default)}")
        lines.append(f"_State = {name}")
        return "\n".join(lines)

    def record_source(self) -> str:
        slots = [slot for slot, _ in self.slots]
        restore = {
            slot: "_distinct_restore"
            for index, feature in enumerate(self.features)
            if _tag(feature) == "distinct_count"
            for slot in self.feature_slots[index].values()
        }
        lines = ["def to_record(S):", f"    return _Record({', '.join(f'S.{s}' for s in slots)})"]
        lines += ["def from_record(R):", "    S = _State()"]
        for slot in slots:
            value = f"R.{slot}"
            if slot in restore:
                value = f"{restore[slot]}({value})"
            lines.append(f"    S.{slot} = {value}")
        lines.append("    return S")
        return "\n".join(lines)

    def values_source(self) -> str:
        values = ", ".join(f"x{i}" for i in range(len(self.features)))
        body = ["    " + line for line in self.values_lines(None)]
        return "\n".join(["def values(S):", *body, f"    return ({values},)"])

    def merge_source(self) -> str | None:
        lines = ["def merge(A, B):", "    R = _State()"]
        lines.append("    R.t_ = max(A.t_, B.t_)")
        for index, feature in enumerate(self.features):
            tag = _tag(feature)
            if tag in _FROM_FEATURES:
                continue
            kind = self.kinds[index]
            assert kind is not None
            template = kind.merge
            if template is None:
                return None
            lines += [
                "    " + line
                for line in self.render(template, index, A="A", B="B", R="R").splitlines()
            ]
        lines.append("    return R")
        return "\n".join(lines)


def _poisoned(
    states: dict[Any, Any],
    key: Any,
    t: int,
    ev: Any,
    exc: Exception,
    poison: list[Any],
    errors: list[Any],
    position: int | None,
) -> None:
    """Set a poison event aside: ``(key, t, ev, exc)`` goes to ``poison``.

    A key state whose ``t_`` is still -1 has had no event past the reading of its fields: the
    failed event made it, and it is dropped. With emission (``position`` is ``len(out)``), the
    event's feature errors so far stay counted but point at no update, since it has none.
    """
    with contextlib.suppress(Exception):  # a key whose hash raises never got a state
        state = states.get(key)
        if state is not None and state.t_ < 0:
            del states[key]
    if position is not None:
        index = len(errors)
        while index and errors[index - 1][0] == position:
            index -= 1
            errors[index] = (-1, *errors[index][1:])
    poison.append((key, t, ev, exc))


def compile_group(features: Sequence[Any], *, group: str = "g0") -> CompiledGroup:
    """Compile features (specs from ``runtime._spec.keyed``) into a :class:`CompiledGroup`.

    Ratios and derived features must name features of the same group.

    Raises:
        SpecError: a feature type that cannot run in a keyed group, or a ratio's (or derived
            feature's) operand that is not in the group.
    """
    builder = _Builder(features)
    for feature in features:
        if _tag(feature) in _FROM_FEATURES:
            for operand in feature.depends_on():
                if operand not in builder.names:
                    raise SpecError(
                        f"{_tag(feature)} {feature.name!r} needs feature {operand!r} in the "
                        "same group"
                    )
    builder.prepare()
    record_type = msgspec.defstruct(
        f"{group.capitalize()}StateRecord",
        [
            (name, Any, None if isinstance(default, _Fresh) else default)
            for name, default in builder.slots
        ],
        array_like=True,
        module=__name__,
    )
    builder.namespace["_Record"] = record_type
    parts = [
        builder.state_class_source(f"{group.capitalize()}State"),
        builder.record_source(),
        builder.apply_source("apply", emit=False, timed=False),
        builder.apply_source("apply_emit", emit=True, timed=False),
        builder.apply_source("apply_timed", emit=False, timed=True),
        builder.apply_source("apply_emit_timed", emit=True, timed=True),
        builder.values_source(),
    ]
    merge_source = builder.merge_source()
    if merge_source is not None:
        parts.append(merge_source)
    source = "\n\n".join(parts) + "\n"
    namespace = dict(builder.namespace)
    filename = f"<featurist group {group} #{next(_COMPILED)}>"
    code = compile(source, filename, "exec")
    exec(code, namespace)
    compiled = CompiledGroup(
        names=builder.names,
        types=tuple(_tag(f) for f in features),
        state_type=namespace["_State"],
        record_type=record_type,
        to_record=namespace["to_record"],
        from_record=namespace["from_record"],
        apply=namespace["apply"],
        apply_emit=namespace["apply_emit"],
        apply_timed=namespace["apply_timed"],
        apply_emit_timed=namespace["apply_emit_timed"],
        values=namespace["values"],
        merge=namespace.get("merge"),
        slot_count=len(builder.slots),
        source=source,
        feature_slots=tuple(dict(slots) for slots in builder.feature_slots),
    )
    _register_source(compiled, filename, source)
    return compiled


def _register_source(compiled: CompiledGroup, filename: str, source: str) -> None:
    """Make the generated lines show in tracebacks and debuggers, as attrs does for the methods
    it writes: ``linecache`` is where ``traceback`` and ``pdb`` look a file's lines up.

    The entry has no modification time, so ``linecache.checkcache`` keeps it (it cannot stat
    ``<...>``); it is dropped when the group is, so that a process that builds many runtimes
    does not keep the source of each.
    """
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    forget = weakref.finalize(compiled, linecache.cache.pop, filename, None)
    forget.atexit = False
