"""Socket-level helpers the proxy engines share: cutting a connection for real, and the open-files limit."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import struct
import time

log = logging.getLogger("lbproxy")

_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP RST and drop what is still buffered.

    ``transport.abort()`` alone closes the file descriptor, but the kernel keeps an orphan socket that goes on
    offering the unsent bytes to a client that does not read (minutes of retries and kernel memory). With
    ``SO_LINGER`` at zero the close sends a RST at once and frees the buffer.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit (each client and each worker connection is one).

    The usual soft limit, 1,024, would turn a burst of clients into accept errors and failed worker connections.
    Returns the limit in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft


_last_exhaustion_log = 0.0


def out_of_descriptors(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is lbproxy running out of file descriptors: its own overload, not the
    worker's fault, so the worker stays in rotation. Logged at most once per 10 s, since it comes in floods."""
    global _last_exhaustion_log
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.EMFILE, errno.ENFILE):
            now = time.monotonic()
            if now - _last_exhaustion_log > 10:
                _last_exhaustion_log = now
                log.error("out of file descriptors (%s): requests get 503 'overloaded'; raise the open-files "
                          "limit (ulimit -n) or add replicas", seen)
            return True
        seen = seen.__cause__ or seen.__context__
    return False
