"""Socket-level helpers the proxy engines share: cutting a connection for real, and the open-files limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct

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
