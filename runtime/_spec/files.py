"""Reading spec files safely: a YAML document's aliases are bounded before it is built.

PyYAML's safe loader builds no objects but plain data, yet an alias (``*name``) stands for the
whole value of its anchor, so a document of a few hundred bytes can stand for billions of
values (the "billion laughs"): the loader shares one object per anchor, but anything that
walks the result (a validation, ``FeatureSet.to_json``, a lookup's default row copied into
every event) expands it. ``decode_yaml`` composes the document's node graph first, counts the
values it would expand to, and refuses it past ``MAX_YAML_NODES``, or when an alias refers to
its own anchor, before building anything.
"""

from __future__ import annotations

from typing import Any

import msgspec
import yaml  # type: ignore[import-untyped]  # PyYAML, which msgspec.yaml uses too

__all__ = ["MAX_YAML_NODES", "ExpansionError", "decode_yaml"]

#: The most values (scalars, lists and tables, each alias counted as a copy of its anchor) a
#: YAML spec may expand to. A large spec holds a few thousand; a JSON or TOML file cannot
#: stand for more values than its size, and this keeps a YAML one to about the same.
MAX_YAML_NODES = 1_000_000

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ExpansionError(ValueError):
    """A YAML document whose aliases expand too far, or refer to themselves."""


def decode_yaml(data: str | bytes) -> Any:
    """The plain data of a YAML document, as ``msgspec.yaml.decode`` returns it.

    Raises:
        msgspec.DecodeError: the text is not YAML.
        ExpansionError: it would expand to more than ``MAX_YAML_NODES`` values, or an alias
            refers to its own anchor.
    """
    loader = _LOADER(data)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node, MAX_YAML_NODES)
        return loader.construct_document(node)
    # what msgspec.yaml.decode turns into a DecodeError
    except (yaml.YAMLError, ValueError, LookupError, AttributeError) as exc:
        if isinstance(exc, ExpansionError):
            raise
        raise msgspec.DecodeError(str(exc)) from None
    finally:
        loader.dispose()


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def check_expansion(root: Any, limit: int) -> int:
    """The number of values the node graph under ``root`` expands to (an alias's node counted
    at each use), walked once per node, without recursion.

    Raises:
        ExpansionError: the count passes ``limit``, or the graph has a cycle.
    """
    size: dict[int, int] = {}
    open_: set[int] = set()  # expanded, children not all counted: the current path
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        key = id(node)
        if counted:
            total = 1 + sum(size[id(child)] for child in _children(node))
            if total > limit:
                raise ExpansionError(
                    f"the document expands to more than {limit:,} values through its aliases "
                    "(*name); write the values out, or fewer of them"
                )
            size[key] = total
            open_.discard(key)
            continue
        if key in size:
            continue
        if key in open_:
            raise ExpansionError(
                "an alias (*name) refers to its own anchor: a value cannot hold itself"
            )
        open_.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)
    return size[id(root)]
