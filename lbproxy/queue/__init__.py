"""Queue endpoints (``type: queue``, DESIGN 6): durable jobs, Runpod-compatible on the client and worker side.

Pure rules (``jobs``, ``submission``, ``results``, ``answers``, ``sdk_env``) import no I/O; the store
(``store``, ``sqlite``) keeps jobs; the service (``service``) runs on the event loop; ``client_api`` and
``worker_api`` are its two HTTP faces; ``webhooks`` and ``http_delivery`` are its outgoing edges.
"""
