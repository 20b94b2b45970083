"""WebSocket frames, as far as a byte tunnel needs them (RFC 6455 5.2): where a frame ends, and close frames.

The tunnel forwards bytes without parsing messages (no reassembly, no unmasking, extensions untouched), but at
``timeouts.execution`` it must tell both ends with a close frame, and a frame may only go in between two
others. ``FrameCursor`` follows the frame headers of one direction to know whether the bytes forwarded so far
end on a boundary: most reads only subtract from the payload still to come. Pure: no I/O.
"""

from __future__ import annotations

import os
import struct

CLOSE = 0x8
GOING_AWAY, INTERNAL_ERROR = 1001, 1011


class FrameCursor:
    """The position of a byte stream of frames: inside a payload (``need`` bytes to come), inside a header
    (``head`` holds its first bytes), or on a boundary."""

    __slots__ = ("head", "need")

    def __init__(self) -> None:
        self.need = 0
        self.head = b""

    @property
    def at_boundary(self) -> bool:
        return self.need == 0 and not self.head

    def feed(self, data: bytes) -> None:
        """Move past ``data``, the next bytes of the stream."""
        need = self.need
        n = len(data)
        if need >= n and not self.head:
            self.need = need - n
            return
        if self.head:
            data = self.head + data
            n = len(data)
            self.head = b""
            i = 0
        else:
            i = need
        while i < n:
            if n - i < 2:
                self.head = data[i:]
                self.need = 0
                return
            b2 = data[i + 1]
            length = b2 & 0x7F
            size = 2 + (4 if b2 & 0x80 else 0) + (2 if length == 126 else 8 if length == 127 else 0)
            if n - i < size:
                self.head = data[i:]
                self.need = 0
                return
            if length == 126:
                length = struct.unpack_from("!H", data, i + 2)[0]
            elif length == 127:
                length = struct.unpack_from("!Q", data, i + 2)[0]
            i += size + length
        self.need = i - n


def close_frame(code: int, reason: bytes, *, masked: bool) -> bytes:
    """A close frame with ``code``; ``masked`` as a client sends it (toward the worker, RFC 6455 5.3)."""
    payload = struct.pack("!H", code) + reason[:123]
    if not masked:
        return bytes((0x80 | CLOSE, len(payload))) + payload
    mask = os.urandom(4)
    return bytes((0x80 | CLOSE, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
