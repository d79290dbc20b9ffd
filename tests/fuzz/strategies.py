"""Hypothesis strategies for the fuzz tests: mutated SDP offers, JSON of any shape, hostile
text, and audio arrays of every dtype, shape and value."""

from __future__ import annotations

import json
import re

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
"""Settings every fuzz test starts from: no deadline (a first call loads code), no example
database in the work tree, fixtures of module scope allowed."""

ANY_CHAR = st.characters(codec=None, exclude_categories=())
"""Every code point, lone surrogates and control characters included."""

NASTY_STRINGS = st.sampled_from([
    "", " ", "\x00", "\u200b", "\ufeff", "\ud800", "\udfff", "\u202e", "\n\r\t", "\x1b[2J",
    "%s%n", "{}", "null", "NaN", "-Infinity", "1e999", "9" * 5000, "\U0010ffff", "a\u0301" * 50,
])

JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**320),
    st.floats(allow_nan=True, allow_infinity=True), st.text(ANY_CHAR, max_size=50),
    NASTY_STRINGS,
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.text(ANY_CHAR, max_size=10) | st.sampled_from(["type", "text", "sdp", "t"]),
        inner, max_size=5),
    max_leaves=20,
)


def deep(depth: int, leaf: str = "1", opener: str = "[", closer: str = "]") -> str:
    """JSON nested ``depth`` levels (deeper than the decoder's recursion limit from ~1000)."""
    return opener * depth + leaf + closer * depth


def dumps(value: object) -> str:
    """JSON text of ``value``, surrogates and NaN as Python writes them."""
    return json.dumps(value, allow_nan=True)


@st.composite
def json_documents(draw: st.DrawFn, keys: tuple[str, ...] = ()) -> bytes:
    """A request body: JSON of any shape (often an object with the route's ``keys``), deeply
    nested JSON, numbers past the int conversion limit, raw bytes or invalid UTF-8."""
    kind = draw(st.integers(0, 5))
    if kind == 0 and keys:
        obj = {k: draw(JSON_VALUES) for k in keys if draw(st.booleans())}
        obj.update(draw(st.dictionaries(st.text(ANY_CHAR, max_size=8), JSON_VALUES, max_size=2)))
        return dumps(obj).encode("utf-8", "surrogatepass")
    if kind == 1:
        return dumps(draw(JSON_VALUES)).encode("utf-8", "surrogatepass")
    if kind == 2:
        depth = draw(st.sampled_from([10, 999, 1000, 5000, 20000]))
        if draw(st.booleans()):
            return deep(depth, opener='{"a":', closer="}").encode()
        return deep(depth).encode()
    if kind == 3:
        return b'{"text": ' + b"7" * draw(st.sampled_from([4300, 4301, 20000])) + b"}"
    if kind == 4:
        return draw(st.binary(max_size=300))
    return b'{"text": "' + draw(st.binary(max_size=40)) + b'\xff\xfe"}'


DATA_CHANNEL_MESSAGES = st.one_of(
    st.text(ANY_CHAR, max_size=200),
    st.binary(max_size=200),
    JSON_VALUES.map(dumps),
    st.builds(lambda kind, payload: dumps({"type": kind, "text": payload, "t": payload}),
              st.sampled_from(["text", "interrupt", "ping", "TEXT", "", None, 1]), JSON_VALUES),
    st.sampled_from([deep(5000), deep(999), '{"type":"ping","t":' + deep(2000) + "}",
                     '{"type":"ping","t":' + "9" * 5000 + "}", "x" * 9000,
                     '{"type":"text","text":"' + "a" * 7900 + '"}', "NaN", "[]", "{}"]),
    st.none() | st.integers() | st.just(bytearray(b"{}")) | st.just(memoryview(b"{}")),
)

TEXT_INPUTS = st.one_of(
    st.text(ANY_CHAR, max_size=300),
    NASTY_STRINGS,
    st.binary(max_size=200),
    st.builds(lambda c, n: c * n, st.text(ANY_CHAR, min_size=1, max_size=3),
              st.sampled_from([1999, 2000, 2001, 100_000, 3_000_000])),
    st.builds(lambda n: b"\xff" * n, st.integers(1, 5000)),
    st.none() | st.integers() | st.floats() | st.lists(st.text(max_size=3), max_size=2)
    | st.just(bytearray(b"hi")) | st.just(memoryview(b"hi")),
)

DTYPES = st.sampled_from([np.int16, np.dtype(">i2"), np.float32, np.float64, np.float16,
                          np.int32, np.int8, np.uint16, np.uint8, np.bool_, np.complex64,
                          np.int64, np.dtype("O")])


@st.composite
def audio_arrays(draw: st.DrawFn) -> object:
    """Anything passed off as audio: arrays of any dtype and shape (NaN/inf, empty, 0-d,
    stereo, non-contiguous, long), lists and other objects."""
    kind = draw(st.integers(0, 11))
    if kind >= 9:  # well-formed int16 mono, so rates and timestamps get their turn
        n, seed = draw(st.integers(1, 20000)), draw(st.integers(0, 2**32 - 1))
        return np.random.default_rng(seed).integers(-32768, 32768, n, dtype=np.int16)
    if kind == 0:
        return draw(st.one_of(st.none(), st.binary(max_size=20), st.lists(st.integers(),
                                                                            max_size=5)))
    if kind == 1:  # long arrays: minutes of audio
        return np.zeros(draw(st.sampled_from([16001, 48001, 2_000_000])), np.int16)
    if kind == 2:  # a strided view of int16
        return np.arange(draw(st.integers(0, 4000)), dtype=np.int16)[::2]
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8)
                 | st.tuples(st.integers(0, 3000)))
    if dtype == np.dtype("O"):
        return np.array([None] * int(np.prod(shape)), dtype=object).reshape(shape)
    return draw(hnp.arrays(dtype, shape))


ALLOWED_RATES = st.sampled_from([8000, 16000, 24000, 32000, 44100, 48000])
SAMPLE_RATES = st.one_of(
    ALLOWED_RATES, ALLOWED_RATES, ALLOWED_RATES,
    st.integers(), st.integers(min_value=2**63, max_value=2**80),
    st.sampled_from([True, False, None, 16000.0, "16000", np.int64(16000), np.uint16(16000),
                     np.float32(16000), -16000, 0]),
)

TIMESTAMPS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(), st.integers(min_value=10**308, max_value=10**400),
    st.sampled_from([None, "0", True, np.float32(1.5), np.int64(7), 10**400, -(10**400)]),
)


SDP_JUNK = st.sampled_from([
    "a=rtpmap:", "a=rtpmap:96", "a=rtpmap:x opus/48000", "a=fmtp:", "a=ssrc:", "a=ssrc:1",
    "a=ssrc-group:FID", "a=candidate:", "a=candidate:1 1 udp x 1.2.3.4 5 typ host",
    "a=extmap:", "a=extmap:x y", "a=rtcp:", "a=rtcp:x", "a=mid:", "a=msid:", "a=setup:",
    "a=setup:bogus", "a=fingerprint:", "a=fingerprint:sha-256", "a=ice-ufrag:", "a=ice-pwd:",
    "a=group:BUNDLE", "a=sctp-port:", "a=sctp-port:x", "a=max-message-size:-1",
    "m=audio", "m=audio x UDP/TLS/RTP/SAVPF 96", "m=video 9 UDP/TLS/RTP/SAVPF",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "m=text 9 RTP/AVP 0",
    "c=IN IP4", "c=IN IP9 x", "o=- x x IN IP4 0", "t=x y", "v=1", "b=AS:x", "s=",
    "a=rtcp-fb:96", "a=rtcp-fb:*", "a=sendrecv", "a=inactive", "a=sendonly",
    "a=" + "x" * 3000, "\x00", "\ud800", "=", "a", "",
])


@st.composite
def mutated_offers(draw: st.DrawFn, base: str) -> str:
    """A real offer with a few of its lines deleted, duplicated, swapped, replaced by junk or
    cut, numbers made extreme, or line endings changed."""
    lines = base.splitlines()
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.integers(0, 7))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            lines[i] = draw(SDP_JUNK)
        elif op == 4:
            lines.insert(i, draw(SDP_JUNK))
        elif op == 5:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == 6:
            extreme = draw(st.sampled_from(["-1", "0", "65536", str(2**64), "1e9", "x", ""]))
            lines[i] = _replace_numbers(lines[i], extreme)
        else:
            lines[i] = lines[i] + draw(st.text(ANY_CHAR, max_size=20))
    ending = draw(st.sampled_from(["\r\n", "\n", "\r", "\r\r\n"]))
    return ending.join(lines) + ending


def _replace_numbers(line: str, value: str) -> str:
    return re.sub(r"\d+", value, line, count=1) if line[:2] != "v=" else line
