"""Encoding live actor state as msgspec MessagePack, and back: the codec of checkpoints.

State is a graph of plain Python objects: dicts, lists, tuples, deques, sets, ``__slots__``
classes, ``sortedcontainers`` lists and ``ddsketch`` sketches, some of them referenced twice
(a sliding window's trackers tuple holds the same objects as its named fields). MessagePack
alone would lose what matters here: tuples would come back as lists (and no longer compare
with the tuples the engine makes next), dict keys that are tuples would not decode, shared
objects would come back as copies, and classes not at all.

So the codec first turns the graph into a tree that MessagePack holds exactly: an atom (None,
bool, int, float, str, bytes) stays as it is; anything else becomes a list ``[tag, ...]``
(a bare list never occurs otherwise, so the tags are unambiguous). Each container and object
gets a number in the order it is first met, and a second reference to it is written as
``[REF, number]``; the decoder numbers what it builds in the same order. Lists, tuples and
dicts of atoms alone, the bulk of any state (window buffers, join events), are written in one
piece and read back without a walk.

Classes are restored only if they are on the allow-list below (unlike pickle, a checkpoint
cannot name a function to call), and each class's slot layout is written once in the header,
so state from a different version of a class is refused with a clear error rather than
misread.
"""

from __future__ import annotations

import datetime
import decimal
import gc
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import Any

import msgspec

from .._exceptions import CheckpointError

__all__ = ["CheckpointError", "StateCodec", "state_codec"]


# tags
_LIST, _TUPLE, _DICT, _SET, _FROZENSET, _DEQUE, _ODICT, _OBJ, _REF, _BIGINT = range(10)
_LIST_ATOMS, _TUPLE_ATOMS, _DICT_STR_ATOMS, _OTHER, _UNSET = range(10, 15)
#: a list or deque of tuples of atoms (a window's ``(time, value)`` pairs): written as it is
_LIST_PAIRS, _DEQUE_PAIRS = range(15, 17)

_ATOMS = frozenset({type(None), bool, int, float, str, bytes})
#: the atoms taken without a check when ints may be beyond 64 bits
_PLAIN_WIDE = _ATOMS - {int}
#: a slot that was never set
_UNSET_SLOT = object()
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1

#: types written as ``[_OTHER, name, text]``
_OTHERS: dict[type, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    datetime.datetime: ("datetime", datetime.datetime.isoformat, datetime.datetime.fromisoformat),
    datetime.date: ("date", datetime.date.isoformat, datetime.date.fromisoformat),
    datetime.timedelta: (
        "timedelta",
        lambda d: [d.days, d.seconds, d.microseconds],
        lambda v: datetime.timedelta(*v),
    ),
    decimal.Decimal: ("decimal", str, decimal.Decimal),
    uuid.UUID: ("uuid", str, uuid.UUID),
    # a distinct count's HyperLogLog registers
    bytearray: ("bytearray", bytes, bytearray),
}
_OTHERS_BY_NAME = {name: decode for name, _, decode in _OTHERS.values()}


def _zero(_: Any) -> int:
    return 0


def _add_singletons() -> None:
    """Objects that are written by name: ddsketch's empty-store bounds (``int`` subclasses
    compared by identity)."""
    from ddsketch import store

    for name in ("_neg_infinity", "_pos_infinity"):
        singleton = getattr(store, name, None)
        if singleton is not None:
            label = f"ddsketch.store.{name}"

            def rebuild(_: Any, singleton: Any = singleton) -> Any:
                return singleton

            _OTHERS[type(singleton)] = (label, _zero, rebuild)
            _OTHERS_BY_NAME[label] = rebuild


_add_singletons()


class _Adapter:
    """How one allowed class is written and rebuilt."""

    __slots__ = ("cls", "layout", "name", "rebuild", "reduce", "slots")

    def __init__(
        self,
        cls: type,
        *,
        reduce: Callable[[Any], Any] | None = None,
        rebuild: Callable[[Any], Any] | None = None,
    ) -> None:
        self.cls = cls
        self.name = f"{cls.__module__}.{cls.__qualname__}"
        self.reduce = reduce
        self.rebuild = rebuild
        slots: list[str] = []
        for klass in reversed(cls.__mro__):
            declared = klass.__dict__.get("__slots__", ())
            if isinstance(declared, str):
                declared = (declared,)
            slots.extend(s for s in declared if s not in ("__dict__", "__weakref__"))
        #: the slots, in a fixed order; None for a class whose instances have a ``__dict__``
        self.slots: tuple[str, ...] | None = tuple(slots) if slots else None
        #: what the header records of the class, to refuse state of another layout
        self.layout: Any = (
            "custom" if reduce is not None else list(self.slots) if self.slots else "dict"
        )


def _sorted_list() -> type:
    from sortedcontainers import SortedList  # type: ignore[import-untyped]

    return SortedList  # type: ignore[no-any-return]


def _default_adapters() -> list[_Adapter]:
    """The classes live state is made of. A class missing here fails a checkpoint with an
    error naming it (and a test that snapshots every feature type finds it first)."""
    from ddsketch import DDSketch, LogarithmicMapping
    from ddsketch.ddsketch import BaseDDSketch
    from ddsketch.store import DenseStore

    from .._enrich import cache as _enrich_cache
    from .._joins import buffer as _join_buffer
    from .._joins import engine as _join_engine
    from .._stats import idle as _idle
    from .._stats import quantiles as _quantiles
    from .._stats import rolling as _window_stats
    from .._windows import engine as _window_engine
    from .._windows import patterns as _window_patterns
    from .._windows import state as _window_state

    sorted_list = _sorted_list()
    plain = [
        _window_engine.KeyWindows,
        _window_engine._Panes,
        _window_engine._Sessions,
        _window_state.SlidingState,
        _window_state.Accumulator,
        _window_state.WindowMoments,
        _window_stats.RunningMoments,
        _window_stats.MonotonicExtremes,
        _window_stats.FrequentValues,
        _window_stats.DistinctWindowCount,
        _window_patterns.PatternState,
        _quantiles.SortedValues,
        _quantiles.QuantileSketch,
        _join_engine.JoinKeyState,
        _join_buffer.SideBuffer,
        _idle.IdleKeys,
        _enrich_cache._Entry,
        DDSketch,
        BaseDDSketch,
        LogarithmicMapping,
        DenseStore,
    ]
    adapters = [_Adapter(cls) for cls in plain]
    adapters.append(_Adapter(sorted_list, reduce=list, rebuild=sorted_list))
    return adapters


class StateCodec:
    """Encodes state graphs to bytes and back (see the module docstring).

    ``extra`` adds allowed classes (``__slots__`` or ``__dict__`` classes, rebuilt without
    calling their ``__init__``).
    """

    def __init__(self, extra: Iterable[type] = ()) -> None:
        adapters = _default_adapters() + [_Adapter(cls) for cls in extra]
        self._by_type: dict[type, _Adapter] = {a.cls: a for a in adapters}
        self._by_name: dict[str, _Adapter] = {a.name: a for a in adapters}
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder()

    # -- encoding ---------------------------------------------------------------------------------
    def encode(self, value: Any) -> bytes:
        """``value`` as bytes. Raises :class:`CheckpointError` naming a type it cannot hold."""
        try:
            return self._encode(value, wide=False)
        except OverflowError:
            # an int beyond 64 bits (an exact sum can get there): walk again, checking each
            return self._encode(value, wide=True)

    def _encode(self, value: Any, *, wide: bool) -> bytes:
        walker = _Encoder(self._by_type, wide)
        with _no_gc():
            tree = walker.walk(value)
            header = {name: layout for name, layout in walker.classes.items()}
            return self._encoder.encode([1, header, tree])

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, data: bytes) -> Any:
        """The value :meth:`encode` was given, rebuilt.

        Raises:
            CheckpointError: the bytes are not a state this codec wrote, or name a class that
                is not allowed or whose layout has changed since.
        """
        with _no_gc():
            return self._decode(data)

    def _decode(self, data: bytes) -> Any:
        try:
            version, header, tree = self._decoder.decode(data)
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"state is not readable: {exc}") from None
        if version != 1:
            raise CheckpointError(f"state format {version!r} is not known (expected 1)")
        for name, layout in header.items():
            adapter = self._by_name.get(name)
            if adapter is None:
                raise CheckpointError(f"state holds a {name}, which may not be restored")
            if layout != adapter.layout:
                raise CheckpointError(
                    f"state of {name} was written with the fields {layout!r}, but this version "
                    f"has {adapter.layout!r}: the checkpoint is from another version"
                )
        return _Decoder(self._by_name).walk(tree)


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a state graph is walked or built: it would run
    over and over as the containers are made (and find nothing to collect), which took
    most of the time of a large state."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Encoder:
    __slots__ = ("by_type", "classes", "memo", "wide")

    def __init__(self, by_type: dict[type, _Adapter], wide: bool) -> None:
        self.by_type = by_type
        self.wide = wide
        self.memo: dict[int, int] = {}
        #: the classes met: name -> layout (the header)
        self.classes: dict[str, Any] = {}

    def _atoms(self, items: Any) -> bool:
        """Whether every item is an atom (that MessagePack holds as it is)."""
        types = set(map(type, items))
        if not types <= _ATOMS:
            return False
        if self.wide and int in types:
            return all(_INT64_MIN <= x <= _UINT64_MAX for x in items if type(x) is int)
        return True

    def _pairs(self, items: Any) -> bool:
        """Whether every item is a tuple of atoms (checked in C, with no walk)."""
        if not items or set(map(type, items)) != {tuple}:
            return False
        return self._atoms(chain.from_iterable(items))

    def _seen(self, value: Any) -> list[Any] | None:
        memo = self.memo
        number = memo.get(id(value))
        if number is not None:
            return [_REF, number]
        memo[id(value)] = len(memo)
        return None

    def walk(self, value: Any) -> Any:
        t = type(value)
        if t in _ATOMS:
            if t is int and self.wide and not _INT64_MIN <= value <= _UINT64_MAX:
                return [_BIGINT, str(value)]
            return value
        if t is tuple:
            if self._atoms(value):
                return [_TUPLE_ATOMS, value]
            walk, plain = self.walk, _PLAIN_WIDE if self.wide else _ATOMS
            return [_TUPLE, [v if type(v) in plain else walk(v) for v in value]]
        ref = self._seen(value)
        if ref is not None:
            return ref
        walk = self.walk
        plain = _PLAIN_WIDE if self.wide else _ATOMS
        if t is list:
            if self._atoms(value):
                return [_LIST_ATOMS, value]
            if self._pairs(value):
                return [_LIST_PAIRS, value]
            return [_LIST, [v if type(v) in plain else walk(v) for v in value]]
        if t is dict:
            if (not value or set(map(type, value)) == {str}) and self._atoms(value.values()):
                return [_DICT_STR_ATOMS, value]
            values = [v if type(v) in plain else walk(v) for v in value.values()]
            return [_DICT, [walk(k) for k in value], values]
        if t is deque:
            if self._pairs(value):
                return [_DEQUE_PAIRS, list(value), value.maxlen]
            return [_DEQUE, [v if type(v) in plain else walk(v) for v in value], value.maxlen]
        if t is OrderedDict:
            values = [v if type(v) in plain else walk(v) for v in value.values()]
            return [_ODICT, [walk(k) for k in value], values]
        if t is set:
            return [_SET, [v if type(v) in plain else walk(v) for v in value]]
        if t is frozenset:
            return [_FROZENSET, [v if type(v) in plain else walk(v) for v in value]]
        adapter = self.by_type.get(t)
        if adapter is not None:
            self.classes[adapter.name] = adapter.layout
            if adapter.reduce is not None:
                # a tuple: never numbered, as a temporary must not be (its id is reused)
                return [_OBJ, adapter.name, walk(tuple(adapter.reduce(value)))]
            if adapter.slots is not None:
                # most slots hold atoms: they are taken as they are, without a call
                state = [
                    item
                    if type(item := getattr(value, s, _UNSET_SLOT)) in plain
                    else [_UNSET]
                    if item is _UNSET_SLOT
                    else walk(item)
                    for s in adapter.slots
                ]
                return [_OBJ, adapter.name, state]
            fields = vars(value)
            return [
                _OBJ,
                adapter.name,
                [[walk(k) for k in fields], [walk(v) for v in fields.values()]],
            ]
        other = _OTHERS.get(t)
        if other is not None:
            name, encode, _ = other
            return [_OTHER, name, encode(value)]
        raise CheckpointError(
            f"cannot checkpoint a value of type {t.__module__}.{t.__qualname__}: state may hold "
            "None, bool, int, float, str, bytes, lists, tuples, dicts, sets, datetimes, "
            "decimals and UUIDs"
        )


class _Decoder:
    __slots__ = ("built", "by_name")

    def __init__(self, by_name: dict[str, _Adapter]) -> None:
        self.by_name = by_name
        #: what has been built, by number
        self.built: list[Any] = []

    def walk(self, node: Any) -> Any:
        if type(node) is not list:
            return node
        tag = node[0]
        walk = self.walk
        built = self.built
        if tag == _TUPLE_ATOMS:
            return tuple(node[1])
        if tag == _TUPLE:
            return tuple([(v if type(v) is not list else walk(v)) for v in node[1]])
        if tag == _REF:
            return built[node[1]]
        if tag == _LIST_ATOMS:
            built.append(node[1])
            return node[1]
        if tag == _LIST:
            items: list[Any] = []
            built.append(items)
            items.extend((v if type(v) is not list else walk(v)) for v in node[1])
            return items
        if tag == _LIST_PAIRS:
            pairs = list(map(tuple, node[1]))
            built.append(pairs)
            return pairs
        if tag == _DEQUE_PAIRS:
            queue_of_pairs = deque(map(tuple, node[1]), maxlen=node[2])
            built.append(queue_of_pairs)
            return queue_of_pairs
        if tag == _DICT_STR_ATOMS:
            built.append(node[1])
            return node[1]
        if tag == _DICT or tag == _ODICT:
            mapping: dict[Any, Any] = {} if tag == _DICT else OrderedDict()
            built.append(mapping)
            keys = [walk(k) for k in node[1]]
            values = [v if type(v) is not list else walk(v) for v in node[2]]
            mapping.update(zip(keys, values, strict=True))
            return mapping
        if tag == _DEQUE:
            queue: deque[Any] = deque(maxlen=node[2])
            built.append(queue)
            queue.extend((v if type(v) is not list else walk(v)) for v in node[1])
            return queue
        if tag == _SET or tag == _FROZENSET:
            index = len(built)
            built.append(None)
            result: set[Any] | frozenset[Any] = (set if tag == _SET else frozenset)(
                (v if type(v) is not list else walk(v)) for v in node[1]
            )
            built[index] = result
            return result
        if tag == _OBJ:
            return self._object(node[1], node[2])
        if tag == _BIGINT:
            return int(node[1])
        if tag == _OTHER:
            value = _OTHERS_BY_NAME[node[1]](node[2])
            built.append(value)  # numbered like every value that is not an atom or a tuple
            return value
        raise CheckpointError(f"state holds an unknown tag {tag!r}")

    def _object(self, name: str, state: Any) -> Any:
        adapter = self.by_name[name]
        built = self.built
        if adapter.rebuild is not None:
            index = len(built)
            built.append(None)
            obj = adapter.rebuild(self.walk(state))
            built[index] = obj
            return obj
        cls: Any = adapter.cls
        obj = cls.__new__(cls)
        built.append(obj)
        if adapter.slots is not None:
            walk = self.walk
            for slot, item in zip(adapter.slots, state, strict=True):
                if type(item) is list:
                    if item[0] == _UNSET:
                        continue
                    item = walk(item)
                object.__setattr__(obj, slot, item)
        else:
            names, values = state
            walk = self.walk
            obj.__dict__.update(zip(names, [walk(v) for v in values], strict=True))
        return obj


_CODEC: StateCodec | None = None


def state_codec() -> StateCodec:
    """The codec of the runtime's state classes (built on first use)."""
    global _CODEC
    if _CODEC is None:
        _CODEC = StateCodec()
    return _CODEC
