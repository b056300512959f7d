"""Validation helpers shared by the spec modules of ``runtime._spec``, and by the runtime's
options (``runtime._options``, whose errors are ``ConfigError`` naming the option alone)."""

from __future__ import annotations

import math
import re
from typing import Any, NoReturn, TypeVar, cast

import msgspec
import msgspec.structs

from .._duration import parse_duration
from .._exceptions import ConfigError, SpecError

#: The longest allowed feature (or feature set) name.
MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PYTHON = "<python>"
_T = TypeVar("_T")


class SpecMeta(msgspec.StructMeta):
    """The metaclass of the spec structs (features, windows, conditions, joins, monitors, the
    feature set): what happens when one is built in Python, by calling its class.

    A missing, unknown or positional argument raises ``SpecError`` naming the struct (and the
    feature, by its ``name``) and the argument, as the file loaders name the field, where
    msgspec raises a bare ``TypeError("Missing required argument 'field'")``. Decoding never
    calls the class, so msgspec's decoding errors, and their explanation, stay as they are.
    Then the struct's ``_built_in_python()`` runs, if it has one: what only code may do (a
    join imports the functions it names).
    """

    def __call__(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        try:
            instance = super().__call__(*args, **kwargs)  # type: ignore[misc]
        except TypeError:
            # diagnosed from the arguments, on the failure path only
            error = _argument_error(cls, args, kwargs)
            if error is None:
                raise
            raise error from None
        hook = getattr(instance, "_built_in_python", None)
        if hook is not None:
            hook()
        return cast("_T", instance)


def _argument_error(cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``SpecError`` for arguments a struct cannot take (None if they look right)."""
    name = kwargs.get("name")
    owner = cls.__name__
    if isinstance(name, str):
        owner += f"(name={name[:60]!r})"
    fields = msgspec.structs.fields(cls)
    known = [field.name for field in fields]
    if args:
        return SpecError(f"{_PYTHON}: {owner}: takes keyword arguments only, got {len(args)}")
    for key in kwargs:
        if key not in known:
            return SpecError(
                f"{_PYTHON}: {owner}.{key}: unknown argument (known: {', '.join(known)})"
            )
    for field in fields:
        if field.required and field.name not in kwargs:
            return SpecError(f"{_PYTHON}: {owner}.{field.name}: missing required argument")
    return None


def fail(owner: object, path: str, reason: str) -> NoReturn:
    """Raise the ``SpecError`` for a rule broken by ``owner``, from its ``__post_init__``.

    Built in Python, the message reads ``<python>: Owner.path: reason``. While decoding, msgspec
    wraps the error in a ``ValidationError`` (keeping it as ``__cause__``) and ``explain``
    (``runtime._spec.explain``) rebuilds the message from the document location and the
    ``(path, reason)`` kept here.
    """
    error = SpecError(f"{_PYTHON}: {type(owner).__name__}.{path}: {reason}")
    error._spec_field = (path, reason)  # type: ignore[attr-defined]
    raise error


def kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def check_str(owner: object, path: str, value: object, *, empty: bool = False) -> None:
    if not isinstance(value, str):
        fail(owner, path, f"expected a string, got {kind(value)}")
    if not empty and not value:
        fail(owner, path, "must not be empty")


def check_name(owner: object, path: str, value: object) -> None:
    check_str(owner, path, value)
    assert isinstance(value, str)
    if len(value) > MAX_NAME_LENGTH:
        fail(owner, path, f"longer than {MAX_NAME_LENGTH} characters: {value[:20]!r}...")
    if not _NAME.fullmatch(value):
        fail(owner, path, f"not a valid name: {value!r} (use letters, digits and _)")


def check_int(owner: object, path: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        fail(owner, path, f"expected an int, got {kind(value)}")
    if not low <= value <= high:
        fail(owner, path, f"must be between {low} and {high}, got {value}")


def check_duration(owner: object, path: str, value: object, *, positive: bool) -> int:
    if positive and isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        # one message for every value out of range, not ">= 0" for -5 then "> 0" for 0
        fail(owner, path, f"must be > 0, got {value!r}")
    try:
        ms = parse_duration(cast("int | float | str", value), field=path)
    except SpecError as exc:
        fail(owner, path, str(exc).removeprefix(f"{path}: "))
    if positive and ms == 0:
        fail(owner, path, f"must be > 0, got {value!r}")
    return ms


def check_option_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """Raise ``ConfigError`` unless the option ``name`` is an int (not a bool) from ``low`` to
    ``high`` (no upper bound for None)."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an int {bound}, got {value!r}")


def check_option_seconds(name: str, value: object) -> None:
    """Raise ``ConfigError`` unless the option ``name`` is a finite number of seconds > 0."""
    if not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")
