"""The functions a spec may name, and what a spec file may reach (``docs/joins.md``).

A join's ``predicate`` and ``merge`` can be functions. Built in Python, a spec holds the
functions themselves, or their ``"module:function"`` names, which are the application's own
code and are imported at once. A spec *file* (or a dict, decoded data) holds names only, and
a file is data: it may come from a config repository, a ticket or a user. So a name in a file
imports nothing by itself: the loader resolves it, after the rest of the spec is valid, only
against what the application allows (``FunctionPolicy``): the functions it lists, and the
functions defined in the modules it lists. Whatever is allowed, a name must lead to a Python
function defined in the module it names (``"rules:same_device"``, not ``"rules:os.system"``,
which is ``os``'s), never to a builtin, a class or the standard library.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["FunctionPolicy", "check_function_name", "function_name", "import_function"]

# module (dotted) ':' attribute (dotted): identifiers only, so no path, no call, no subscript
_PART = r"[^\W\d]\w*"
_NAME = re.compile(rf"{_PART}(?:\.{_PART})*:{_PART}(?:\.{_PART})*")


class FunctionError(ValueError):
    """A name that does not lead to a function a spec may use: ``str(error)`` is the reason,
    which the caller places after the field's path."""


def check_function_name(value: object) -> str:
    """``value`` if it is a well-formed ``"module:function"`` name, else ``FunctionError``."""
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise FunctionError(f"expected a function or a 'module:function' name, got {kind}")
    if not _NAME.fullmatch(value):
        raise FunctionError(f"not a 'module:function' name: {value[:200]!r}")
    return value


def _check_found(name: str, module_name: str, attribute: str, found: object) -> Callable[..., Any]:
    """The function ``found`` under ``name``, if it is a Python function defined under that
    very name: not a builtin (``os:system``), a class, or a function another module defines
    and this one imported (``rules:os.path.join``)."""
    if not inspect.isfunction(found):
        what = "a builtin" if inspect.isbuiltin(found) else f"a {type(found).__name__}"
        raise FunctionError(f"{name!r} is not a Python function (it is {what})")
    if found.__module__ != module_name or found.__qualname__ != attribute:
        raise FunctionError(
            f"{name!r} is {found.__module__}:{found.__qualname__}, defined elsewhere: name a "
            "function by the module that defines it"
        )
    return found


def _stdlib(module_name: str) -> bool:
    return module_name.partition(".")[0] in sys.stdlib_module_names


def import_function(name: str) -> Callable[..., Any]:
    """The function ``name`` (``"module:function"``, a dotted attribute path allowed after the
    colon), importing its module: for names the application's own code gives, never for names
    read from a file (``FunctionPolicy.resolve``).

    Raises:
        FunctionError: the name is malformed, names the standard library, or its module cannot
            be imported, or has no such function.
    """
    module_name, _, attribute = check_function_name(name).partition(":")
    if _stdlib(module_name):
        raise FunctionError(
            f"{name!r} names a standard-library module: a spec names the application's own "
            "functions"
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise FunctionError(f"cannot import module {module_name!r} of {name!r}: {exc}") from None
    return _check_found(name, module_name, attribute, _walk(found, module_name, attribute, name))


def _walk(found: Any, module_name: str, attribute: str, name: str) -> Any:
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise FunctionError(f"module {module_name!r} has no {attribute!r} (from {name!r})")
        found = getattr(found, part)
    return found


def function_name(value: Any) -> str:
    """The ``"module:function"`` name of a function, for a spec written back out. It imports
    nothing: the function's module is loaded already.

    Raises:
        TypeError: the function cannot be found again by its name (a lambda, a nested function,
            a bound method, a function of a script's ``__main__``).
    """
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    name = f"{module}:{qualname}"
    found: Any = None
    loaded = sys.modules.get(module) if isinstance(module, str) else None
    if loaded is not None and module != "__main__" and _NAME.fullmatch(name):
        try:
            found = _walk(loaded, str(module), qualname, name)
        except FunctionError:
            found = None
    # the name must lead back to this very function (not, say, a bound method's class
    # attribute), from any process (not from a script's __main__)
    if found is not value:
        raise TypeError(
            f"cannot write the function {value!r} into a spec: it cannot be found again by "
            "its name; give a function defined at the top level of an importable module (or "
            "its 'module:function' name) instead"
        )
    return name


class FunctionPolicy:
    """What the ``"module:function"`` names of a spec file may reach: the application's
    allow-list, given to ``FeatureSet.from_file`` (and the other loaders).

    Args:
        functions: functions (and aggregate classes) a spec may name, each by its own
            ``"module:function"`` name (``function_name``); nothing is imported to find them.
        modules: modules whose functions a spec may name; a package's submodules are allowed
            with it. A module is imported only when a valid spec names one of its functions.

    Raises:
        TypeError: ``functions`` holds something that is not a function that can be named, or
            ``modules`` is a single string or holds something that is not a module name.
        ValueError: a module is of the standard library.
    """

    __slots__ = ("_functions", "_modules")

    def __init__(self, functions: Iterable[Callable[..., Any]] = (), modules: Iterable[str] = ()):
        if isinstance(modules, str):
            raise TypeError(f"modules must be a list of module names, not a string: {modules!r}")
        self._functions: dict[str, Callable[..., Any]] = {}
        for function in functions:
            if not callable(function):
                raise TypeError(f"functions: {function!r} is not a function")
            self._functions[function_name(function)] = function
        self._modules: tuple[str, ...] = tuple(modules)
        for module in self._modules:
            if not isinstance(module, str) or not re.fullmatch(rf"{_PART}(?:\.{_PART})*", module):
                raise TypeError(f"modules: not a module name: {module!r}")
            if _stdlib(module):
                raise ValueError(f"modules: {module!r} is of the standard library")

    def _allows_module(self, module_name: str) -> bool:
        return any(module_name == m or module_name.startswith(f"{m}.") for m in self._modules)

    def allows_module(self, module_name: str) -> bool:
        """Whether the functions (and classes) defined in ``module_name`` may be named."""
        return self._allows_module(module_name)

    def listed(self, name: str) -> Any:
        """What ``functions`` lists under ``name`` (a function, or an aggregate class), or
        None."""
        return self._functions.get(name)

    def describe(self) -> str:
        """What the policy allows, for an error message."""
        parts = []
        if self._functions:
            parts.append("functions " + ", ".join(sorted(self._functions)))
        if self._modules:
            parts.append("modules " + ", ".join(self._modules))
        return "; ".join(parts) or "none"

    def resolve(self, name: str) -> Callable[..., Any]:
        """The function a spec file names, if the policy allows it.

        Raises:
            FunctionError: the name is malformed or not allowed, or does not lead to a
                function defined under that name.
        """
        check_function_name(name)
        if name in self._functions:
            return self._functions[name]
        module_name = name.partition(":")[0]
        if not self._allows_module(module_name):
            raise FunctionError(
                f"{name!r} is not a function the application allows a spec file to name "
                f"(allowed: {self.describe()}); list it with "
                "FeatureSet.from_file(..., functions=[...]) or its module with modules=[...]"
            )
        return import_function(name)
