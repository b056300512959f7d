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

Bounds, so that no state and no file can make the codec fail other than with
:class:`CheckpointError`: a graph nested deeper than :data:`MAX_DEPTH` containers is refused
(MessagePack's encoder and decoder recurse, and so do the walkers here: the bound keeps them far
below the interpreter's recursion limit, which a deeper tree would hit as a ``RecursionError``
in the middle of a checkpoint); a ``str`` that is not valid Unicode (a lone surrogate) and an
int beyond 64 bits are written in a form MessagePack holds; and decoding checks every node it
reads (tags, lengths, indexes, the types of what each tag holds), so bytes that were not written
by :meth:`StateCodec.encode` raise :class:`CheckpointError`, never a raw ``KeyError`` or
``RecursionError``, and never allocate more than their own size suggests.
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

__all__ = ["MAX_DEPTH", "CheckpointError", "StateCodec", "state_codec"]

#: the deepest nesting of containers and objects a state may have. The deepest state the
#: engines make is about 12 (a join's buffered event inside its key's buffers); ingest refuses
#: event values nested deeper than 64 in the fields that state keeps, so 200 is never reached
#: by valid input, and keeps the encoder's tree (two MessagePack levels per container) well
#: inside the recursion limit.
MAX_DEPTH = 200


# tags
_LIST, _TUPLE, _DICT, _SET, _FROZENSET, _DEQUE, _ODICT, _OBJ, _REF, _BIGINT = range(10)
_LIST_ATOMS, _TUPLE_ATOMS, _DICT_STR_ATOMS, _OTHER, _UNSET = range(10, 15)
#: a list or deque of tuples of atoms (a window's ``(time, value)`` pairs): written as it is
_LIST_PAIRS, _DEQUE_PAIRS = range(15, 17)

_ATOMS = frozenset({type(None), bool, int, float, str, bytes})
#: the atoms taken without a check in a careful walk: ints may be beyond 64 bits, and strs may
#: hold lone surrogates (neither of which MessagePack holds as they are)
_PLAIN_CAREFUL = _ATOMS - {int, str}
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
    datetime.time: ("time", datetime.time.isoformat, datetime.time.fromisoformat),
    decimal.Decimal: ("decimal", str, decimal.Decimal),
    uuid.UUID: ("uuid", str, uuid.UUID),
    # a distinct count's HyperLogLog registers
    bytearray: ("bytearray", bytes, bytearray),
}
_OTHERS_BY_NAME = {name: decode for name, _, decode in _OTHERS.values()}
#: what each ``_OTHER`` holds, checked before it is decoded: ``bytearray(2**30)`` would
#: allocate 1 GiB, ``tuple("abc")`` would be a tuple of letters
_OTHERS_HOLD: dict[str, type] = {
    "datetime": str,
    "date": str,
    "time": str,
    "timedelta": list,
    "decimal": str,
    "uuid": str,
    "bytearray": bytes,
}
#: a ``str`` that is not valid Unicode (lone surrogates), as its ``surrogatepass`` bytes
_OTHERS_BY_NAME["str"] = lambda data: data.decode("utf-8", "surrogatepass")
_OTHERS_HOLD["str"] = bytes


def _timedelta(value: Any) -> datetime.timedelta:
    if len(value) != 3 or set(map(type, value)) != {int}:
        raise ValueError(f"a timedelta is [days, seconds, microseconds], got {value!r}")
    return datetime.timedelta(*value)


_OTHERS_BY_NAME["timedelta"] = _timedelta


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
            _OTHERS_HOLD[label] = int


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
    from .._keyed import custom as _custom
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
        _window_state.CustomSlidingState,
        _window_state.CustomAccumulator,
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
    # a user-defined aggregate's state: written as its aggregate's dump, loaded by its runner
    # (never by the codec, which calls no code a checkpoint names)
    adapters.append(
        _Adapter(_custom.CustomCell, reduce=_custom.reduce_cell, rebuild=_custom.rebuild_cell)
    )
    # its sliding windows' two stacks: not written, rebuilt from the window's values
    adapters.append(
        _Adapter(
            _window_state.SlidingStacks,
            reduce=_window_state.reduce_stacks,
            rebuild=_window_state.rebuild_stacks,
        )
    )
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
        """``value`` as bytes.

        Raises:
            CheckpointError: ``value`` holds a type the codec cannot restore (named), is
                nested deeper than :data:`MAX_DEPTH`, or could not be read (an object whose
                attribute raised, say: the message names the exception).
        """
        try:
            try:
                return self._encode(value, careful=False)
            except (OverflowError, UnicodeEncodeError):
                # an int beyond 64 bits (an exact sum can get there) or a str with a lone
                # surrogate: walk again, checking each int and str
                return self._encode(value, careful=True)
        except CheckpointError:
            raise
        except Exception as exc:  # a checkpoint fails with one kind of error, naming the cause
            raise CheckpointError(
                f"cannot checkpoint the state: {type(exc).__name__}: {_brief(exc)}"
            ) from exc

    def encode_key_groups(
        self, entries: dict[int, list[tuple[Any, Any]]]
    ) -> tuple[dict[int, bytes], list[tuple[Any, CheckpointError]]]:
        """Each key group's ``(key, entry)`` pairs encoded, leaving out alone a key whose
        entry cannot be encoded: one bad value must not keep every other key out of every
        checkpoint. Returns the encoded groups and the keys left out with their error.

        A group is encoded in one piece; only a group that fails is encoded again key by key
        (so the cost is paid where a key fails, not for every checkpoint).
        """
        blobs: dict[int, bytes] = {}
        left_out: list[tuple[Any, CheckpointError]] = []
        encode = self.encode
        for group, items in entries.items():
            try:
                blobs[group] = encode(items)
                continue
            except CheckpointError:
                pass
            good = []
            for item in items:
                try:
                    encode([item])
                except CheckpointError as exc:
                    left_out.append((item[0], exc))
                else:
                    good.append(item)
            blobs[group] = encode(good)
        return blobs, left_out

    def _encode(self, value: Any, *, careful: bool) -> bytes:
        walker = _Encoder(self._by_type, careful)
        with _no_gc():
            tree = walker.walk(value)
            header = {name: layout for name, layout in walker.classes.items()}
            return self._encoder.encode([1, header, tree])

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, data: bytes) -> Any:
        """The value :meth:`encode` was given, rebuilt.

        Raises:
            CheckpointError: the bytes are not a state this codec wrote (whatever is wrong
                with them: a bad tag, length, index or type, nesting beyond
                :data:`MAX_DEPTH`), or name a class that is not allowed or whose layout has
                changed since.
        """
        with _no_gc():
            try:
                return self._decode(data)
            except CheckpointError:
                raise
            except Exception as exc:  # any failure here means bytes this codec did not write
                raise CheckpointError(
                    f"state is not valid: {type(exc).__name__}: {_brief(exc)}"
                ) from None

    def _decode(self, data: bytes) -> Any:
        try:
            decoded = self._decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise CheckpointError(f"state is not readable: {_brief(exc)}") from None
        if type(decoded) is not list or len(decoded) != 3:
            raise CheckpointError("state is not readable: not [version, header, tree]")
        version, header, tree = decoded
        if version != 1:
            raise CheckpointError(f"state format {_brief(version)} is not known (expected 1)")
        if type(header) is not dict:
            raise CheckpointError("state is not readable: its header is not a map")
        for name, layout in header.items():
            adapter = self._by_name.get(name) if type(name) is str else None
            if adapter is None:
                raise CheckpointError(f"state holds a {_brief(name)}, which may not be restored")
            if layout != adapter.layout:
                raise CheckpointError(
                    f"state of {name} was written with the fields {_brief(layout)}, but this "
                    f"version has {adapter.layout!r}: the checkpoint is from another version"
                )
        # only the classes the header declares (and checked) may be built
        return _Decoder({name: self._by_name[name] for name in header}).walk(tree, 0)


def _brief(value: Any) -> str:
    """``repr`` or ``str`` of something read from a file, cut short for a message."""
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _too_deep() -> CheckpointError:
    return CheckpointError(
        f"state is nested deeper than {MAX_DEPTH} containers, which a checkpoint does not hold"
    )


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


def _valid_str(value: str) -> bool:
    """Whether MessagePack can hold ``value`` as it is (no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Encoder:
    __slots__ = ("by_type", "careful", "classes", "depth", "memo")

    def __init__(self, by_type: dict[type, _Adapter], careful: bool) -> None:
        self.by_type = by_type
        #: check each int (64 bits) and str (valid Unicode) instead of taking them as they are
        self.careful = careful
        self.memo: dict[int, int] = {}
        #: the containers being walked, one inside the other
        self.depth = 0
        #: the classes met: name -> layout (the header)
        self.classes: dict[str, Any] = {}

    def _atoms(self, items: Any) -> bool:
        """Whether every item is an atom (that MessagePack holds as it is)."""
        if self.careful and not isinstance(items, list | tuple):
            items = list(items)  # read twice below: an iterator (a chain) would be used up
        types = set(map(type, items))
        if not types <= _ATOMS:
            return False
        if self.careful:
            if int in types and not all(
                _INT64_MIN <= x <= _UINT64_MAX for x in items if type(x) is int
            ):
                return False
            if str in types and not all(_valid_str(x) for x in items if type(x) is str):
                return False
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
            if self.careful:
                if t is int and not _INT64_MIN <= value <= _UINT64_MAX:
                    # hex: no limit on digits, where str() of an int stops at 4300
                    return [_BIGINT, hex(value)]
                if t is str and not _valid_str(value):
                    return [_OTHER, "str", value.encode("utf-8", "surrogatepass")]
            return value
        depth = self.depth = self.depth + 1
        if depth > MAX_DEPTH:
            raise _too_deep()
        try:
            return self._container(value, t)
        finally:
            self.depth -= 1

    def _container(self, value: Any, t: type) -> Any:
        walk = self.walk
        plain = _PLAIN_CAREFUL if self.careful else _ATOMS
        if t is tuple:
            if self._atoms(value):
                return [_TUPLE_ATOMS, value]
            return [_TUPLE, [v if type(v) in plain else walk(v) for v in value]]
        ref = self._seen(value)
        if ref is not None:
            return ref
        if t is list:
            if self._atoms(value):
                return [_LIST_ATOMS, value]
            if self._pairs(value):
                return [_LIST_PAIRS, value]
            return [_LIST, [v if type(v) in plain else walk(v) for v in value]]
        if t is dict:
            if (not value or set(map(type, value)) == {str}) and self._atoms(
                chain(value, value.values()) if self.careful else value.values()
            ):
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
            "None, bool, int, float, str, bytes, lists, tuples, dicts, sets, datetimes, times, "
            "decimals and UUIDs"
        )


def _bad(what: str, node: Any) -> CheckpointError:
    return CheckpointError(f"state is not valid: {what}: {_brief(node)}")


class _Decoder:
    """Rebuilds a tree of :class:`_Encoder`; every node is checked before it is used (a
    checkpoint file may have been tampered with: its CRC guards against damage, not intent)."""

    __slots__ = ("built", "by_name")

    def __init__(self, by_name: dict[str, _Adapter]) -> None:
        self.by_name = by_name
        #: what has been built, by number
        self.built: list[Any] = []

    def walk(self, node: Any, depth: int) -> Any:
        if type(node) is not list:
            return node
        if depth >= MAX_DEPTH:
            raise _too_deep()
        depth += 1
        size = len(node)
        tag = node[0] if size else None
        if type(tag) is not int:
            raise _bad("a node without a tag", node)
        if tag == _UNSET:
            raise _bad("an unset slot outside an object", node)
        if tag == _REF:
            number = node[1] if size == 2 else None
            if type(number) is not int or not 0 <= number < len(self.built):
                raise _bad("a reference to nothing built", node)
            return self.built[number]
        if tag == _BIGINT:
            if size != 2 or type(node[1]) is not str:
                raise _bad("a big int that is not text", node)
            return int(node[1], 0)  # hex, or decimal as older versions wrote it
        if tag == _OTHER:
            if size != 3 or node[1] not in _OTHERS_BY_NAME:
                raise _bad("a value of an unknown type", node)
            name, data = node[1], node[2]
            if type(data) is not _OTHERS_HOLD[name]:
                raise _bad(f"a {name} that is not {_OTHERS_HOLD[name].__name__}", node)
            value = _OTHERS_BY_NAME[name](data)
            if name != "str":
                self.built.append(value)  # numbered like every value not an atom or tuple
            return value
        if tag == _OBJ:
            if size != 3 or node[1] not in self.by_name:
                raise _bad("an object of a class the header does not declare", node)
            return self._object(node[1], node[2], depth)
        if tag == _DEQUE or tag == _DEQUE_PAIRS:
            if size != 3 or not (node[2] is None or (type(node[2]) is int and node[2] >= 0)):
                raise _bad("a deque with a bad maxlen", node)
        elif tag == _DICT or tag == _ODICT:
            if size != 3 or type(node[2]) is not list or len(node[1]) != len(node[2]):
                raise _bad("a map whose keys and values differ in number", node)
        elif size != 2:
            raise _bad("a node of a bad length", node)
        items = node[1]
        if tag == _DICT_STR_ATOMS:
            if type(items) is not dict:
                raise _bad("a map that is not a map", node)
            self.built.append(items)
            return items
        if type(items) is not list:
            raise _bad("a container whose items are not a list", node)
        return self._container(tag, items, node, depth)

    def _items(self, items: list[Any], depth: int) -> list[Any]:
        walk = self.walk
        return [v if type(v) is not list else walk(v, depth) for v in items]

    def _container(self, tag: int, items: list[Any], node: list[Any], depth: int) -> Any:
        built = self.built
        if tag == _TUPLE_ATOMS:
            if any(type(v) is list for v in items):
                raise _bad("atoms that are not atoms", node)
            return tuple(items)
        if tag == _TUPLE:
            return tuple(self._items(items, depth))
        if tag == _LIST_ATOMS:
            if any(type(v) is list for v in items):
                raise _bad("atoms that are not atoms", node)
            built.append(items)
            return items
        if tag == _LIST:
            result: list[Any] = []
            built.append(result)
            result.extend(self._items(items, depth))
            return result
        if tag == _LIST_PAIRS or tag == _DEQUE_PAIRS:
            if any(type(v) is not list or any(type(x) is list for x in v) for v in items):
                raise _bad("pairs that are not tuples of atoms", node)
            pairs: Any = (
                list(map(tuple, items))
                if tag == _LIST_PAIRS
                else deque(map(tuple, items), maxlen=node[2])
            )
            built.append(pairs)
            return pairs
        if tag == _DICT or tag == _ODICT:
            mapping: dict[Any, Any] = {} if tag == _DICT else OrderedDict()
            built.append(mapping)
            keys = self._items(items, depth)
            mapping.update(zip(keys, self._items(node[2], depth), strict=True))
            return mapping
        if tag == _DEQUE:
            queue: deque[Any] = deque(maxlen=node[2])
            built.append(queue)
            queue.extend(self._items(items, depth))
            return queue
        if tag == _SET or tag == _FROZENSET:
            index = len(built)
            built.append(None)
            kind = set if tag == _SET else frozenset
            result_set: set[Any] | frozenset[Any] = kind(self._items(items, depth))
            built[index] = result_set
            return result_set
        raise _bad("an unknown tag", node)

    def _object(self, name: str, state: Any, depth: int) -> Any:
        adapter = self.by_name[name]
        built = self.built
        if adapter.rebuild is not None:
            index = len(built)
            built.append(None)
            obj = adapter.rebuild(self.walk(state, depth))
            built[index] = obj
            return obj
        cls: Any = adapter.cls
        obj = cls.__new__(cls)
        built.append(obj)
        walk = self.walk
        if adapter.slots is not None:
            if type(state) is not list or len(state) != len(adapter.slots):
                raise _bad(f"the slots of a {name}", state)
            for slot, item in zip(adapter.slots, state, strict=True):
                if type(item) is list:
                    if item == [_UNSET]:
                        continue
                    item = walk(item, depth)
                object.__setattr__(obj, slot, item)
        else:
            if type(state) is not list or len(state) != 2:
                raise _bad(f"the fields of a {name}", state)
            names, values = state
            if type(names) is not list or type(values) is not list:
                raise _bad(f"the fields of a {name}", state)
            names = [walk(k, depth) for k in names]
            if any(type(k) is not str for k in names):
                raise _bad(f"the field names of a {name}", state)
            obj.__dict__.update(zip(names, [walk(v, depth) for v in values], strict=True))
        return obj


_CODEC: StateCodec | None = None


def state_codec() -> StateCodec:
    """The codec of the runtime's state classes (built on first use)."""
    global _CODEC
    if _CODEC is None:
        _CODEC = StateCodec()
    return _CODEC
