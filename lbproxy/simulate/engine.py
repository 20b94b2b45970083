"""The event engine: a virtual clock and a queue of timed events, nothing else.

Events at the same instant run in a fixed order of kinds (``Order``): what changes workers first, then the
requests that end, then the requests that arrive, then waits that run out, then the controller. So a request
that arrives exactly when a worker turns ready goes to it without waiting, a slot freed at the instant a waiter's
``timeouts.wait`` ends serves that waiter, and the controller sees every change of an instant before it decides.
Within one kind, events run in the order they were scheduled. Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import heapq
from enum import IntEnum

__all__ = ["EventQueue", "Order"]


class Order(IntEnum):
    """The kinds of events, in the order they run at one instant."""

    WORKER = 0  # a worker turns ready, or has stopped
    DONE = 1  # a request ends
    ARRIVAL = 2  # a request arrives (the trace is merged in by the endpoint, not queued here)
    TIMEOUT = 3  # the oldest queued request reaches timeouts.wait
    REDISPATCH = 4  # a starting worker no longer expected soon: share the queue again
    DECIDE = 5  # the controller's tick or wake-up


Event = tuple[float, int, int, object]  # (time, order, sequence, payload)


class EventQueue:
    """A heap of events ordered by (time, kind, scheduling order)."""

    __slots__ = ("_seq", "heap")

    def __init__(self) -> None:
        self.heap: list[Event] = []  # read-only outside: the run loop looks at heap[0] without a call
        self._seq = 0

    def __len__(self) -> int:
        return len(self.heap)

    def push(self, at: float, order: Order, payload: object = None) -> int:
        """Schedule ``payload`` at ``at``; returns the event's sequence number (a handle to tell it from others)."""
        self._seq += 1
        heapq.heappush(self.heap, (at, int(order), self._seq, payload))
        return self._seq

    def peek(self) -> tuple[float, int] | None:
        """(time, order) of the next event, or None when there is none."""
        if not self.heap:
            return None
        head = self.heap[0]
        return head[0], head[1]

    def pop(self) -> Event:
        return heapq.heappop(self.heap)
