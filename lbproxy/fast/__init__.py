"""The fast request path: HTTP/1.1 at the protocol level (asyncio Protocols, llhttp through httptools).

The default engine (``LBPROXY_ENGINE=aiohttp`` picks the fallback). It keeps every rule of ``lbproxy/proxy.py``
(the aiohttp engine), which still serves WebSocket sessions: handshakes are handed to it with their connection.

- ``server.py``: one ``ClientConnection`` per client: parsing, pipelining order, flow control, timeouts.
- ``exchange.py``: one request: checks, worker slot, forwarding, streaming, errors, release.
- ``upstream.py``: keep-alive connections to workers, pooled per worker.
- ``framing.py``: header rules, heads and JSON errors on raw bytes (pure).
- ``site.py``: the listening socket, the sweeper, the WebSocket hand-off and the graceful shutdown.
"""
