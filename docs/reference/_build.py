"""Build helpers for the documentation site; ``mkdocs.yml`` loads this file twice.

- As an MkDocs hook: ``on_page_markdown`` turns the fences ```` ```python no-run ```` (shown but
  not run by ``tests/test_docs.py``) into plain ```` ```python ```` fences, which Markdown's
  fenced-code extension accepts (it reads no words after the language).
- As a Griffe extension (``SourceConventions``), for the API reference:

  - a ``msgspec.Struct`` gets the ``__init__`` that msgspec gives it at run time, which static
    analysis cannot see: the parameters' order, kinds and defaults come from
    ``inspect.signature`` of the imported class, their annotations from the source;
  - a ``#:`` comment above a field becomes its docstring, as Sphinx's autodoc reads it (our
    records document their fields that way), and a record's commented fields are listed in
    one ``Attributes:`` table rather than under a heading each;
  - private base classes (``_Window``) are not shown;
  - the Sphinx roles of docstrings (``:class:`X```, ``:meth:`X```, ...) become plain code,
    ```X```, and a paragraph ending in ``::`` ends in ``:``, since Markdown has neither.

None of them changes what a page says: they translate the source's conventions into Markdown.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import griffe
import msgspec

# An opening fence with the info string "python no-run" (and maybe more words after it).
_NO_RUN_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})python no-run\b[^\n]*$", re.MULTILINE)
# A Sphinx role: :class:`FeatureSet`, :meth:`~FeatureRuntime.get`, :data:`FEATURE_TYPES`.
_ROLE = re.compile(r":(?:class|meth|func|attr|data|exc|mod|obj):`~?([^`]+)`")
# reStructuredText's "paragraph::" that introduces a literal block (indented, as in Markdown),
# and the same alone on its line ("Example::"), which must not read as a Google section title.
_LITERAL_INTRO = re.compile(r"(\S \S*)::$", re.MULTILINE)
_LITERAL_TITLE = re.compile(r"^(\s*)(\w+)::$", re.MULTILINE)

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs hook: a ``python no-run`` fence is rendered as any other Python block."""
    return _NO_RUN_FENCE.sub(r"\1\2python", markdown)


def markdown_docstring(text: str) -> str:
    """``text`` with Sphinx roles as plain code and ``::`` literal intros as ``:``."""
    text = _ROLE.sub(r"`\1`", text)
    return _LITERAL_TITLE.sub(r"\1**\2:**", _LITERAL_INTRO.sub(r"\1:", text))


def field_comment(lines: list[str], lineno: int) -> str | None:
    """The ``#:`` comment lines right above line ``lineno`` (1-based), joined, or None."""
    found: list[str] = []
    index = lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.append(lines[index].lstrip()[2:].strip())
        index -= 1
    return "\n".join(reversed(found)) if found else None


class SourceConventions(griffe.Extension):
    """Griffe extension: msgspec signatures, ``#:`` field comments, Sphinx roles."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        path = attr.filepath
        if attr.docstring is not None or attr.lineno is None or not isinstance(path, Path):
            return
        if path not in attr.lines_collection:
            return
        text = field_comment(attr.lines_collection[path], attr.lineno)
        if text is not None:
            attr.docstring = griffe.Docstring(text, lineno=attr.lineno, parent=attr)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        objects = _walk(pkg)
        # Each class by the class itself, imported: the package's aliases are not resolved yet,
        # so Griffe cannot follow a base class to another module; Python's __mro__ can.
        classes: dict[type, griffe.Class] = {}
        for obj in objects:
            if isinstance(obj, griffe.Class) and isinstance(real := _imported(obj), type):
                classes[real] = obj
        # Signatures first: they read the fields of base classes, which the steps below change.
        for real, cls in classes.items():
            _add_struct_init(cls, real, classes)
        for real, cls in classes.items():
            _fields_as_attributes(cls, real)
            cls.bases = _public_bases(cls, real, classes)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = markdown_docstring(obj.docstring.value)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if isinstance(member, griffe.Object):  # not an alias (a re-export)
            found.extend(_walk(member))
    return found


def _imported(cls: griffe.Class) -> Any:
    """The class itself, imported, or None when it cannot be (one defined in a function)."""
    try:
        value: Any = importlib.import_module(cls.module.path)
        for part in cls.path[len(cls.module.path) + 1 :].split("."):
            value = getattr(value, part)
    except Exception:
        return None
    return value


def _add_struct_init(cls: griffe.Class, real: type, classes: dict[type, griffe.Class]) -> None:
    if not issubclass(real, msgspec.Struct) or "__init__" in cls.members:
        return
    parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    for param in inspect.signature(real).parameters.values():
        source = _field_source(param.name, real, classes)
        annotation: str | griffe.Expr | None = (
            source.annotation if source is not None else _annotation_text(param)
        )
        parameters.append(
            griffe.Parameter(
                param.name,
                annotation=annotation,
                kind=_KINDS[param.kind],
                default=_default(param, source),
                docstring=source.docstring if source is not None else None,
            )
        )
    init = griffe.Function(
        "__init__",
        lineno=cls.lineno,
        endlineno=cls.lineno,
        parent=cls,
        parameters=griffe.Parameters(*parameters),
        returns="None",
    )
    cls.set_member("__init__", init)


def _field_source(
    name: str, real: type, classes: dict[type, griffe.Class]
) -> griffe.Attribute | None:
    """The field's declaration in the nearest class of the MRO that declares it, or None."""
    for klass in real.__mro__:
        declared = classes[klass].members.get(name) if klass in classes else None
        if isinstance(declared, griffe.Attribute):
            return declared
    return None


def _annotation_text(param: inspect.Parameter) -> str | None:
    if param.annotation is inspect.Parameter.empty:
        return None
    return inspect.formatannotation(param.annotation)


def _default(param: inspect.Parameter, source: griffe.Attribute | None) -> str | griffe.Expr | None:
    """How the parameter's default is written: as in the source, or as msgspec reports it."""
    if param.default is inspect.Parameter.empty:
        return None
    written = source.value if source is not None else None
    if isinstance(written, griffe.ExprCall) and written.function.canonical_name == "field":
        for argument in written.arguments:
            if isinstance(argument, griffe.ExprKeyword) and argument.name == "default_factory":
                return f"{argument.value}()"
            if isinstance(argument, griffe.ExprKeyword) and argument.name == "default":
                return argument.value
        written = None
    if written is not None:
        return written
    return repr(param.default)


def _fields_as_attributes(cls: griffe.Class, real: type) -> None:
    """A record's documented fields become one ``Attributes:`` table in its docstring, instead
    of a heading each. Not for a class whose docstring documents its fields as ``Args:``.

    A comment above several fields, with no blank line or comment between them, documents
    them together (``keys``, ``state_bytes``, ``state_bytes_per_key``): each gets its text.
    """
    if not issubclass(real, msgspec.Struct):
        return
    if cls.docstring is None or re.search(r"^(Args|Attributes):$", cls.docstring.value, re.M):
        return
    own = [
        member
        for name in real.__struct_fields__
        if isinstance(member := cls.members.get(name), griffe.Attribute)
    ]
    own.sort(key=lambda field: field.lineno or 0)
    groups: list[list[griffe.Attribute]] = []
    for field in own:
        if field.docstring is not None:
            groups.append([field])
        elif groups and field.lineno == (groups[-1][-1].endlineno or -1) + 1:
            groups[-1].append(field)
    if not groups:
        return
    entries = []
    for group in groups:
        docstring = group[0].docstring
        assert docstring is not None
        first, *rest = docstring.value.splitlines()
        for field in group:
            kind = f" ({field.annotation})" if field.annotation is not None else ""
            lines = [f"    {field.name}{kind}: {first}", *(f"        {line}" for line in rest)]
            entries.append("\n".join(lines))
            cls.del_member(field.name)
    cls.docstring.value += "\n\nAttributes:\n" + "\n".join(entries)


def _public_bases(cls: griffe.Class, real: type, classes: dict[type, griffe.Class]) -> list[Any]:
    """The class's bases, each private one (``_Window``) replaced by its own public bases: a
    private base is an implementation detail."""
    hidden = {base.__name__: base for base in real.__bases__ if base.__name__.startswith("_")}
    bases: list[Any] = []
    for base in cls.bases:
        name = str(base).rsplit(".", 1)[-1]
        if name not in hidden:
            bases.append(base)
        elif hidden[name] in classes:
            bases.extend(_public_bases(classes[hidden[name]], hidden[name], classes))
    return list({str(base): base for base in bases}.values())
