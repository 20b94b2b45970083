"""Queue endpoints (``type: queue``, README "Queue endpoints"): durable, Runpod-compatible jobs on both sides.

Pure rules (``jobs``, ``submissions``, ``results``, ``answers``, ``sdk_env``) import no I/O; the store
(``store``, ``sqlite``) keeps jobs; the service (``service``) runs on the event loop; ``client_api`` and
``worker_api`` are its two HTTP faces; ``webhooks`` and ``http_delivery`` are its outgoing edges.
"""
