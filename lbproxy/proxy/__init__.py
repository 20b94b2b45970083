"""The request path: HTTP/1.1 at the protocol level (asyncio Protocols, llhttp through httptools), WebSockets
tunnelled byte for byte after the worker's 101.

Pure rules (no I/O, no asyncio), each in one place:

- ``settings.py``: the proxy's settings, one frozen object built from the config (swapped whole on reload).
- ``rules.py``: what is admitted and what a worker failure means (retry elsewhere, send again, give up).
- ``errors.py``: lbproxy's own JSON errors, rendered to bytes.
- ``framing.py``: header rules and heads on raw bytes.
- ``websocket.py``: frame boundaries and close frames (for the tunnel's timeout).
- ``access.py``: the access-log line.

I/O, on the event loop:

- ``connection.py``: one ``ClientConnection`` per client: parsing, pipelining order, flow control, timeouts.
- ``exchange.py``: one request: checks, worker slot, forwarding, streaming, errors, release.
- ``upstream.py``: keep-alive connections to workers, pooled per worker.
- ``tunnel.py``: a WebSocket session after the 101: bytes both ways with back-pressure.
- ``site.py``: the listening socket, the sweeper and the graceful shutdown.

They meet through narrow protocols (``sides.py``): an exchange sees its client as a ``ClientSide`` and its
worker connection's parser calls a ``ResponseSink``; nothing reaches into another's attributes.
"""
