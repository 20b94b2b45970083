"""Frame boundaries of a WebSocket byte stream, and close frames (lbproxy.proxy.websocket): pure, no sockets."""

from __future__ import annotations

import os
import struct

from hypothesis import given
from hypothesis import strategies as st

from lbproxy.proxy.websocket import FrameCursor, close_frame


def frame(payload: bytes, *, masked: bool, opcode: int = 0x2) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if masked:
        mask = os.urandom(4)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


sizes = st.lists(st.sampled_from([0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70000]), min_size=1, max_size=6)


@given(sizes=sizes, masked=st.booleans(), cuts=st.lists(st.integers(min_value=1, max_value=200000), max_size=8))
def test_the_cursor_is_on_a_boundary_exactly_at_the_end_of_each_frame(sizes, masked, cuts):
    frames = [frame(b"x" * n, masked=masked) for n in sizes]
    stream = b"".join(frames)
    ends = set()
    at = 0
    for f in frames:
        at += len(f)
        ends.add(at)
    points = sorted({c % (len(stream) + 1) for c in cuts} | ends | {len(stream)})
    cursor, fed = FrameCursor(), 0
    for point in points:
        if point <= fed:
            continue
        cursor.feed(stream[fed:point])
        fed = point
        assert cursor.at_boundary == (fed in ends), (sizes, fed)


def test_a_header_split_byte_by_byte_is_followed():
    data = frame(b"y" * 70000, masked=True)
    cursor = FrameCursor()
    for i in range(14):
        cursor.feed(data[i:i + 1])
        assert not cursor.at_boundary
    cursor.feed(data[14:])
    assert cursor.at_boundary


def test_close_frames_carry_the_code_masked_toward_the_worker():
    plain = close_frame(1011, b"execution timeout", masked=False)
    assert plain[:2] == bytes([0x88, 19]) and plain[2:4] == struct.pack("!H", 1011)
    masked = close_frame(1011, b"execution timeout", masked=True)
    assert masked[0] == 0x88 and masked[1] == 0x80 | 19
    mask = masked[2:6]
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(masked[6:]))
    assert payload == struct.pack("!H", 1011) + b"execution timeout"
    cursor = FrameCursor()
    cursor.feed(masked)
    assert cursor.at_boundary
