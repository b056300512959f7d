"""The dead letter store: bounded in count and in bytes, every letter counted, a large message
kept as its start and size, an error kept as a copy without its traceback (issue 15, item 2)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from actors import ActorSystem, ConfigError, DeadLetterReason, DeadLetters

FAILED, REJECTED = DeadLetterReason.FAILED, DeadLetterReason.REJECTED


def _raised(make: Any) -> BaseException:
    try:
        make()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def test_small_messages_are_kept_as_they_are() -> None:
    store = DeadLetters()
    message = {"k": "a", "values": list(range(100))}
    letter = store.record(message, "a", REJECTED)
    assert letter.message is message and not letter.truncated
    assert sys.getsizeof(message) < letter.size < 8_000
    assert store.letters() == [letter] and list(store) == [letter]


@pytest.mark.parametrize(
    ("message", "start"),
    [
        (b"\x00" * 100_000, b"\x00" * 1024),
        (bytearray(b"ab" * 50_000), b"ab" * 512),
        ("é" * 100_000, "é" * 1024),
        (list(range(100_000)), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, ...]"),
        ({"b": "x" * 100_000, "a": 1}, "{'b': 'xxxxxxxxxx"),
    ],
)
def test_a_large_message_is_kept_as_its_start_and_size(message: Any, start: Any) -> None:
    store = DeadLetters()
    letter = store.record(message, "a", REJECTED)
    assert letter.truncated
    assert letter.message[: len(start)] == start and len(letter.message) <= 1024
    assert letter.size >= 100_000
    stats = store.statistics()
    assert stats.truncated == 1 and stats.held_bytes < 4096


def test_the_message_limit_follows_max_bytes() -> None:
    message = "x" * 100_000
    assert DeadLetters().record(message, "a", REJECTED).truncated  # 64 KiB
    big = DeadLetters(max_bytes=1 << 30)  # 1 MiB
    assert big.record(message, "a", REJECTED).message is message


def test_letters_are_evicted_by_bytes_and_all_stay_counted() -> None:
    store = DeadLetters(capacity=10_000, max_bytes=10 << 20)  # messages of 10 KiB kept whole
    for i in range(1_500):
        store.record("x" * 10_000 + str(i), "a", FAILED if i % 2 else REJECTED)
    stats = store.statistics()
    assert stats.total == 1_500 and stats.by_reason == {"rejected": 750, "failed": 750}
    assert stats.truncated == 0
    assert (10 << 20) - 20_000 < stats.held_bytes <= 10 << 20 and 900 < stats.held < 1_100
    assert stats.held + stats.evicted == 1_500
    assert store.letters()[-1].message.endswith("1499")  # the newest are kept
    assert store.count(FAILED) == 750
    store.clear()
    assert store.statistics().held_bytes == 0 and store.count() == 1_500


def test_letters_are_evicted_by_count() -> None:
    store = DeadLetters(capacity=3)
    for i in range(5):
        store.record(i, "a", REJECTED)
    assert [letter.message for letter in store.letters()] == [2, 3, 4]
    assert store.statistics().evicted == 2


def test_a_letter_larger_than_max_bytes_is_counted_not_held() -> None:
    store = DeadLetters(max_bytes=4_000)
    seen = []
    store.add_listener(seen.append)
    store.record("small", "a", REJECTED)
    store.record("m", "a", REJECTED, detail="d" * 5_000)  # a detail of 4 KiB, the overhead
    assert [letter.message for letter in store.letters()] == ["small"]
    assert store.statistics().evicted == 1 and store.count() == 2 and len(seen) == 2


def test_a_long_detail_is_cut() -> None:
    letter = DeadLetters().record("m", "a", REJECTED, detail="d" * 100_000)
    assert letter.detail == "d" * 4096 + "... (100000 characters)"


def test_an_error_is_kept_as_a_copy_without_its_traceback() -> None:
    held = list(range(100_000))

    def fail(values: list[int]) -> None:
        try:
            raise KeyError(len(values))
        except KeyError as exc:
            raise ValueError("bad batch") from exc

    error = _raised(lambda: fail(held))
    letter = DeadLetters().record("m", "a", FAILED, error=error)
    copy = letter.error
    assert type(copy) is ValueError and copy is not error and copy.args == ("bad batch",)
    assert type(copy.__cause__) is KeyError and copy.__cause__.args == (100_000,)
    assert copy.__context__ is copy.__cause__ and copy.__suppress_context__
    assert copy.__traceback__ is None and copy.__cause__.__traceback__ is None
    # the caller's exception is untouched: it can still be logged or raised with its frames
    assert error.__traceback__ is not None and error.__cause__ is not None
    assert error.__cause__.__traceback__ is not None


def test_a_context_chain_is_copied_too() -> None:
    def fail() -> None:
        try:
            raise OSError(2, "no such file", "/x")
        except OSError:
            raise RuntimeError("while handling") from None

    error = _raised(fail)
    copy = DeadLetters().record("m", "a", FAILED, error=error).error
    assert copy is not None and copy.__suppress_context__ and copy.__cause__ is None
    context = copy.__context__
    assert isinstance(context, FileNotFoundError) and context.__traceback__ is None
    assert (context.errno, context.strerror, context.filename) == (2, "no such file", "/x")


class _Rejected(ValueError):
    def __init__(self, message: str, *, field: str, payload: Any) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field
        self.payload = payload


def test_a_custom_error_keeps_its_attributes_and_shares_the_message() -> None:
    store = DeadLetters()
    small = {"k": 1}
    error = _raised(lambda: (_ for _ in ()).throw(_Rejected("bad", field="k", payload=small)))
    copy = store.record(small, "a", REJECTED, error=error).error
    assert isinstance(copy, _Rejected) and str(copy) == "field 'k': bad"  # not formatted twice
    assert copy.field == "k" and copy.payload is small
    large = b"x" * 200_000
    error = _Rejected("bad", field="k", payload=large)
    letter = store.record(large, "a", REJECTED, error=error)
    assert letter.truncated and letter.error.payload is letter.message  # held once
    assert store.statistics().held_bytes < 8_000


def test_large_error_arguments_are_shortened() -> None:
    error = ValueError("x" * 200_000, list(range(50_000)))
    copy = DeadLetters().record("m", "a", FAILED, error=error).error
    assert copy is not None and copy.args[0] == "x" * 1024 and len(copy.args[1]) <= 1024
    assert error.args[0] == "x" * 200_000  # the original keeps them


def test_an_error_that_cannot_be_copied_is_described() -> None:
    class Odd(Exception):
        def __new__(cls, *args: Any) -> Odd:
            if args:
                raise TypeError("no args")
            return super().__new__(cls)

        def __str__(self) -> str:
            return "odd"

    error = Odd()
    error.args = ("boom",)
    copy = DeadLetters().record("m", "a", FAILED, error=error).error
    assert type(copy) is Exception and "Odd: odd" in str(copy)


def test_objects_other_than_builtin_containers_count_their_own_size_only() -> None:
    class Handle:
        def __init__(self) -> None:
            self.state = list(range(1_000_000))  # live state the letter does not own

    handle = Handle()
    letter = DeadLetters().record(handle, "a", REJECTED)
    assert letter.message is handle and letter.size < 1_000


def test_the_byte_bound_is_checked() -> None:
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ConfigError, match="max_bytes must be an int >= 1"):
            DeadLetters(max_bytes=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="max_bytes must be an int >= 1"):
            ActorSystem(dead_letters_max_bytes=bad)  # type: ignore[arg-type]


async def test_the_actor_system_passes_the_byte_bound_on() -> None:
    async with ActorSystem(dead_letters_max_bytes=1 << 20) as system:
        assert system.statistics().dead_letters.max_bytes == 1 << 20
