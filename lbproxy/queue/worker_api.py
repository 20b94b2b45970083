"""The worker API: the routes an unchanged ``runpod`` SDK worker calls (runpod-protocol 1.3), on
``queue.worker_listen``, apart from the client API so clients never reach them.

Each route names its worker (``/job-take/{worker}``) and must carry that worker's own secret (the SDK sends
RUNPOD_AI_API_KEY raw as ``Authorization``), so a worker can take and report only its own jobs. The job id
comes from the path only: the SDK leaks ``X-Request-ID`` of one job into its other requests.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from ..config import Config
from .http_errors import json_error, json_errors
from .jobs import Job
from .service import QueueService
from .sessions import WorkerSession

log = logging.getLogger("lbproxy.queue.workers")

# A worker with a wrong key (e.g. ~/.runpod/config.toml's key sent instead of RUNPOD_AI_API_KEY) polls again at
# once on any answer but 429: a short pause before the 401 keeps that from becoming a hot loop.
UNAUTHORIZED_PAUSE = 1.0
MAX_BATCH = 100


class WorkerApi:
    def __init__(self, config: Config, service: QueueService) -> None:
        self.name = config.name
        self.service = service
        self.result_limit = config.queue.max_result_size

    def app(self) -> web.Application:
        # Results arrive whole (the SDK posts json.dumps(result)); aiohttp's 1 MiB default would answer 413,
        # which the SDK does not retry: the result would be lost. _read applies queue.max_result_size instead.
        app = web.Application(client_max_size=self.result_limit + 1, middlewares=[json_errors])
        r = app.router
        base = "/v2/{endpoint}"
        r.add_get(f"{base}/job-take/{{worker}}", self.job_take)
        r.add_get(f"{base}/job-take-batch/{{worker}}", self.job_take_batch)
        r.add_get(f"{base}/job-stop/{{worker}}", self.job_stop)
        r.add_post(f"{base}/job-done/{{worker}}/{{job}}", self.job_done)
        r.add_post(f"{base}/job-stream/{{worker}}/{{job}}", self.job_stream)
        r.add_get(f"{base}/ping/{{worker}}", self.ping)
        return app

    async def _session(self, request: web.Request) -> WorkerSession | web.Response:
        session = self.service.sessions.get(request.match_info["worker"])
        if request.match_info["endpoint"] == self.name and session is not None and \
                session.allows(request.headers.get("Authorization")):
            return session
        await asyncio.sleep(UNAUTHORIZED_PAUSE)
        log.warning("worker API: refused %s %s (unknown worker or wrong RUNPOD_AI_API_KEY)",
                    request.method, request.path)
        return json_error(401, "unauthorized", "unknown worker, or not its RUNPOD_AI_API_KEY")

    @staticmethod
    def _jobs(jobs: list[Job]) -> list[bytes]:
        # The payload is stored as the JSON object the worker gets, minus its id: splice the id in.
        return [b'{"id":' + json.dumps(j.id).encode() + b"," + j.payload.encode()[1:] for j in jobs]

    async def _read(self, request: web.Request) -> bytes | None:
        """The body, or None when it is over queue.max_result_size (read no further than that)."""
        limit = self.result_limit
        if request.content_length is not None and request.content_length > limit:
            return None
        parts, size = [], 0
        while chunk := await request.content.read(1 << 20):
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)

    async def job_take(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if isinstance(session, web.Response):
            return session
        jobs = await self.service.take(session, 1)
        if not jobs:
            return web.Response(status=204)
        return web.Response(body=self._jobs(jobs)[0], content_type="application/json")

    async def job_take_batch(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if isinstance(session, web.Response):
            return session
        try:
            wanted = max(1, min(int(request.query.get("batch_size", "1")), MAX_BATCH))
        except ValueError:
            wanted = 1
        jobs = await self.service.take(session, wanted)
        if not jobs:
            return web.Response(status=204)
        return web.Response(body=b"[" + b",".join(self._jobs(jobs)) + b"]", content_type="application/json")

    async def job_stop(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if isinstance(session, web.Response):
            return session
        stops = await self.service.stops(session)
        if not stops:
            return web.Response(status=204)
        return web.Response(body=json.dumps({"jobsToStop": stops}).encode(), content_type="application/json")

    async def job_done(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if isinstance(session, web.Response):
            return session
        job_id = request.match_info["job"]
        body = await self._read(request)  # JSON, whatever Content-Type says (the SDK labels it a form)
        if body is None:
            await self.service.fail_oversized(session, job_id, self.result_limit)
        else:
            await self.service.done(session, job_id, body)
        return web.Response(status=200, body=b'{"status":"ok"}', content_type="application/json")

    async def job_stream(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if isinstance(session, web.Response):
            return session
        body = await self._read(request)
        if body is None:  # a lost chunk would leave a silent hole in the stream: the job fails instead
            await self.service.fail_oversized(session, request.match_info["job"], self.result_limit)
        else:
            await self.service.chunk(session, request.match_info["job"], body)
        return web.Response(status=200, body=b'{"status":"ok"}', content_type="application/json")

    async def ping(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if isinstance(session, web.Response):
            return session
        if request.query.get("status") == "unhealthy":
            log.error("worker %s reports itself unhealthy: %s (%s)", session.id, request.query.get("check", "?"),
                      request.query.get("reason", ""))
        ids = [j for j in request.query.get("job_id", "").split(",") if j]
        await self.service.ping(session, ids)
        return web.Response(status=200, body=b'{"status":"ok"}', content_type="application/json")
