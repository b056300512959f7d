"""Making a package's re-exported names say where users import them from."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable
from types import FunctionType
from typing import Any

__all__ = ["fixup_module_metadata"]


def fixup_module_metadata(package: str, names: Iterable[str], namespace: dict[str, Any]) -> None:
    """Set ``__module__`` to ``package`` on each class and function of ``names`` (found in
    ``namespace``, the package's globals) defined in one of its private modules, as trio,
    anyio and httpx do: reprs, tracebacks and pickles then show ``package.X``.

    A class's own string annotations (``from __future__ import annotations``) are evaluated
    first where they were written: msgspec and ``typing.get_type_hints`` evaluate them in the
    module ``__module__`` names, where names such as ``Callable`` would no longer be found.
    Type aliases and constants are left alone.
    """
    for name in names:
        value = namespace[name]
        home = getattr(value, "__module__", None)
        if not isinstance(value, type | FunctionType) or not isinstance(home, str):
            continue  # a type alias or a constant: nothing to rename
        if home.startswith(package + "."):
            if isinstance(value, type):
                _resolve_annotations(value, vars(sys.modules[home]))
            value.__module__ = package


def _resolve_annotations(cls: type, namespace: dict[str, Any]) -> None:
    """Evaluate the class's own annotations in ``namespace`` (its module), then in the class,
    as ``typing.get_type_hints`` looks names up. An annotation that cannot be evaluated (a
    name imported for type checking only) stays a string."""
    annotations = inspect.get_annotations(cls)
    if not annotations:
        return
    scope = dict(vars(cls))
    resolved = {}
    for field, annotation in annotations.items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, scope, namespace)
            except Exception:
                pass
        resolved[field] = annotation
    cls.__annotations__ = resolved
