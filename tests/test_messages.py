"""The worker -> master messages: their one encoding, and a decoder that never raises.

`rollover.core.messages.decode` is fed what app code could write on a worker's pipe:
random bytes, JSON (flat, deep, with huge numbers), the old JSON messages, lines of every
length, numbers with signs, exponents and underscores. Whatever comes in, it returns an
`Envelope` or a `Garbled`; and what `encode` writes, it reads back as it was.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollover.core.messages import (
    MAX_COUNT,
    MAX_LINE,
    MAX_PID,
    MAX_TEXT,
    Counts,
    Envelope,
    Failed,
    Garbled,
    Ready,
    Recycle,
    Unlisten,
    decode,
    encode,
)
from rollover.core.outcomes import Outcomes

counts = st.integers(0, MAX_COUNT)
messages = st.one_of(
    st.just(Ready()),
    st.builds(Failed, st.text(max_size=200)),
    st.builds(Counts, st.builds(Outcomes, counts, counts, counts, counts, counts)),
    st.builds(Recycle, st.text(max_size=200), st.booleans()),
    st.just(Unlisten()),
)


def roundtrip(pid: int, message: object) -> Envelope | Garbled:
    line = encode(pid, message)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) <= MAX_LINE
    return decode(line[:-1])


@settings(deadline=None)
@given(st.integers(1, MAX_PID), messages)
def test_what_is_encoded_decodes_to_the_same_message(pid: int, message: object) -> None:
    decoded = roundtrip(pid, message)
    assert isinstance(decoded, Envelope)
    assert decoded.pid == pid
    match message:
        case Failed(cause):
            # one line, printable: what an operator reads in the log
            assert isinstance(decoded.message, Failed)
            shown = decoded.message.cause
            assert shown.isprintable() and len(shown) <= MAX_TEXT + 3
            if cause.isprintable() and cause == " ".join(cause.split()):
                assert shown == cause
        case Recycle(_, overdue):
            assert isinstance(decoded.message, Recycle)
            assert decoded.message.overdue is overdue
        case _:
            assert decoded.message == message


@settings(max_examples=500, deadline=None)  # no wall-clock bound: a busy machine
@given(st.binary(max_size=5000))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decode(data), Envelope | Garbled)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)  # no wall-clock bound: a busy machine
@given(json_values)
def test_random_json_is_garbled(value: object) -> None:
    line = json.dumps(value).encode()
    assert isinstance(decode(line), Garbled)


@settings(max_examples=300, deadline=None)  # no wall-clock bound: a busy machine
@given(st.sampled_from(["ready", "failed", "counts", "recycle", "unlisten"]),
       st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=30)).map(str),
                max_size=8))
def test_known_kinds_with_random_fields_never_raise(kind: str, fields: list[str]) -> None:
    decoded = decode(" ".join([kind, *fields]).encode("utf-8", "surrogatepass"))
    assert isinstance(decoded, Envelope | Garbled)
    if isinstance(decoded, Envelope):
        assert 1 <= decoded.pid <= MAX_PID
        if isinstance(decoded.message, Counts):
            assert all(0 <= n <= MAX_COUNT for n in vars(decoded.message.outcomes).values())


@pytest.mark.parametrize("line", [
    b'{"pid": 1e400, "event": "ready"}',  # killed the master before (OverflowError)
    b"[" * 200_000,  # killed it too (RecursionError)
    b'{"pid": 12, "event": "recycle", "detail": "x"}',
    b"ready 1e400",
    b"ready -12",
    b"ready +12",
    b"ready 1_2",
    b"ready 0",
    b"ready " + str(MAX_PID + 1).encode(),
    b"ready " + b"9" * 400,
    b"ready 12 extra",
    b"unlisten 12 extra",
    b"unlisten",
    b"unlisten -3",
    b"unlisten 0",
    b"unlisten " + b"9" * 400,
    b"counts 12 1 2 3 4",
    b"counts 12 1 2 3 4 5 6",
    b"counts 12 " + b" ".join([str(10**26).encode()] * 5),
    b"counts 12 1 2 3 4 -5",
    b"counts 12 1 2 3 4 \xd9\xa3",  # an Arabic-Indic digit: isdigit, not a count
    b"recycle 12 maybe why",
    b"x" * (MAX_LINE + 10),
    b"\xff\xfe\x00\x00",
    b"",
])
def test_hostile_lines_are_garbled(line: bytes) -> None:
    decoded = decode(line)
    assert isinstance(decoded, Garbled), decoded
    assert len(decoded.sample) <= 90


def test_text_is_one_printable_bounded_line() -> None:
    decoded = roundtrip(12, Failed("boom\n\x1b[31mred\x07 " + "x" * 5000))
    assert isinstance(decoded, Envelope) and isinstance(decoded.message, Failed)
    cause = decoded.message.cause
    assert cause.startswith("boom ?[31mred? ") and cause.isprintable()
    assert len(cause) <= MAX_TEXT + 3


def test_the_wire_format_reads_as_documented() -> None:
    assert encode(7, Ready()) == b"ready 7\n"
    assert encode(7, Unlisten()) == b"unlisten 7\n"
    assert decode(b"unlisten 7") == Envelope(7, Unlisten())
    assert encode(7, Counts(Outcomes(5, 3, 1, 1, 0))) == b"counts 7 5 3 1 1 0\n"
    assert encode(7, Recycle("max_requests: served 10 of 10", overdue=True)) == \
        b"recycle 7 overdue max_requests: served 10 of 10\n"
    assert decode(b"failed 7 ImportError: no module named app") == \
        Envelope(7, Failed("ImportError: no module named app"))
