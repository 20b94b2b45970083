"""The client API of a queue endpoint on ``listen``: Runpod's ``/v2/{endpoint}/...`` routes, JSON only.

``RUNPOD_ENDPOINT_BASE_URL=http://HOST:PORT/v2`` is all an unchanged Runpod client needs.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .. import logs
from ..auth import ApiKeys
from ..config import Config
from ..proxy import access
from .answers import accepted_body, health_body, status_body, stream_body
from .http_errors import Handler, json_answer, json_error, unavailable
from .jobs import JobState
from .service import QueueService, new_job_id
from .store import DuplicateJob, StoreUnavailable
from .submissions import BadSubmission, parse_submission, runsync_wait


class AccessLog(AbstractAccessLogger):
    """After every client API request: ``lbproxy_requests_total`` and its duration (the dashboard's request
    charts), and with ``log.access`` a line in the load balancer's form (worker ``-`` and no queue wait: a job
    waits in the store, and its /status says how long). aiohttp makes one per connection from the class;
    ``ClientApi.access_log`` binds it to the endpoint's metrics and reloadable switch."""

    observe: Callable[[int, float], None] = staticmethod(lambda status, seconds: None)
    on: Callable[[], bool] = staticmethod(lambda: True)  # read per request: aiohttp reads ``enabled`` once a connection

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.observe(response.status, time)
        if not self.on():
            return
        text, fields = access.entry(request.method.encode(), request.raw_path.encode("latin-1", "replace"),
                                    response.status, b"", 0.0, time, response.body_length,
                                    request.headers.get("X-Request-Id", "-").encode("latin-1", "replace"))
        logs.access(text, fields)


class ClientApi:
    def __init__(self, config: Config, service: QueueService) -> None:
        self.name = config.name
        self.service = service
        self.keys = ApiKeys(config.auth.keys())
        self.run_limit = config.queue.max_run_body
        self.runsync_limit = config.queue.max_runsync_body
        self.log_access = config.log.access
        self.stopping = False

    def access_log(self, observe: Callable[[int, float], None]) -> type[AccessLog]:
        """The access-log class of this API's runner: it counts every request with ``observe`` and writes a
        line while ``log_access`` (a reload may turn it)."""
        return type("ClientAccessLog", (AccessLog,), {"observe": staticmethod(observe),
                                                     "on": staticmethod(lambda: self.log_access)})

    def reload(self, config: Config) -> None:
        """SIGHUP's live settings here: the keys and the access log (submissions take the new timeouts from
        the service)."""
        self.keys = ApiKeys(config.auth.keys())
        self.log_access = config.log.access

    def app(self) -> web.Application:
        # No middleware: each one costs every request a layer of calls, and the client API is the hot path of
        # a queue (every job's /run). Routes are wrapped instead, and a catch-all answers JSON 404s.
        app = web.Application(client_max_size=max(self.run_limit, self.runsync_limit) + 1)
        r = app.router
        base = "/v2/{endpoint}"
        guard = self._guarded
        r.add_post(f"{base}/run", guard(self.run))
        r.add_post(f"{base}/runsync", guard(self.runsync))
        for verb in ("GET", "POST"):
            r.add_route(verb, f"{base}/status/{{id}}", guard(self.status))
            r.add_route(verb, f"{base}/stream/{{id}}", guard(self.stream))
        r.add_post(f"{base}/cancel/{{id}}", guard(self.cancel))
        r.add_post(f"{base}/retry/{{id}}", guard(self.retry))
        r.add_post(f"{base}/purge-queue", guard(self.purge_queue))
        r.add_get(f"{base}/health", guard(self.health))
        r.add_route("*", r"/{tail:[\s\S]*}", self.no_route)
        return app

    def _guarded(self, handler: Handler) -> Handler:
        """Auth (Bearer or the raw key, as Runpod's docs use both), then the endpoint name."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.keys.allows(request.headers.get("Authorization"), raw=True):
                return json_error(401, "unauthorized", "send a valid API key as 'Authorization: Bearer <key>'")
            endpoint = request.match_info["endpoint"]
            if endpoint != self.name:
                return json_error(404, "no_such_endpoint", f"this is endpoint {self.name!r}, not {endpoint!r}")
            if self.stopping and handler in (self.run, self.runsync):
                return json_error(503, "shutting_down", "the endpoint is shutting down; submit again shortly")
            try:
                return await handler(request)
            except StoreUnavailable as exc:  # a database restarting: nothing was accepted, submit again
                self.service.store_trouble(exc)
                return unavailable(exc)
        return guarded

    async def no_route(self, request: web.Request) -> web.Response:
        return json_error(404, "not_found", f"{request.method} {request.path}: no such route; see /v2/{self.name}/"
                          "run, runsync, status/ID, stream/ID, cancel/ID, retry/ID, purge-queue, health")

    async def _body(self, request: web.Request, limit: int, setting: str) -> bytes | web.Response:
        if request.content_length is None or request.content_length <= limit:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                pass
            else:
                if len(body) <= limit:
                    return body
        return json_error(413, "body_too_large", f"the body is larger than {setting} ({limit} bytes)")

    async def _submit(self, request: web.Request, sync: bool) -> tuple[str, web.Response | None]:
        limit, setting = (self.runsync_limit, "queue.max_runsync_body") if sync else \
            (self.run_limit, "queue.max_run_body")
        body = await self._body(request, limit, setting)
        if isinstance(body, web.Response):
            return "", body
        try:
            job = parse_submission(body, new_job_id(sync), self.service.defaults, sync)
        except BadSubmission as exc:
            return "", json_error(400, "bad_request", str(exc))
        try:
            stored = await self.service.submit(job)  # committed: the id we answer with survives a crash
        except DuplicateJob:
            return "", json_error(409, "duplicate_job", "a job with this id exists; submit again")
        return stored.id, None

    async def run(self, request: web.Request) -> web.Response:
        job_id, error = await self._submit(request, sync=False)
        return error or json_answer(accepted_body(job_id))

    async def runsync(self, request: web.Request) -> web.Response:
        try:
            wait = runsync_wait(request.query.get("wait"))
        except BadSubmission as exc:
            return json_error(400, "bad_request", str(exc))
        job_id, error = await self._submit(request, sync=True)
        if error is not None:
            return error
        job = await self.service.wait_finished(job_id, wait)
        if job is None:
            return self._gone(job_id)
        if job.terminal:
            return json_answer(status_body(job, self.service.clock()))
        return json_answer(accepted_body(job.id, job.state))

    def _gone(self, job_id: str) -> web.Response:
        return json_error(404, "job_not_found",
                          f"no job {job_id}: never submitted, past its TTL, or its result's retention is over")

    async def status(self, request: web.Request) -> web.Response:
        job = await self.service.store.get(request.match_info["id"])
        if job is None:
            return self._gone(request.match_info["id"])
        return json_answer(status_body(job, self.service.clock()))

    async def stream(self, request: web.Request) -> web.Response:
        found = await self.service.store.take_chunks(request.match_info["id"])
        if found is None:
            return self._gone(request.match_info["id"])
        job, chunks = found
        return json_answer(stream_body(job.state, chunks))

    async def cancel(self, request: web.Request) -> web.Response:
        job = await self.service.cancel(request.match_info["id"])
        if job is None:
            return self._gone(request.match_info["id"])
        return json_answer(accepted_body(job.id, job.state))

    async def retry(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        job = await self.service.retry(job_id)
        if job is not None:
            return json_answer(accepted_body(job.id, JobState.IN_QUEUE))
        current = await self.service.store.get(job_id)
        if current is None:
            return self._gone(job_id)
        return json_error(400, "not_retryable", f"job {job_id} is {current.state.value}; only FAILED and "
                          f"TIMED_OUT jobs can be retried", current.state.value)

    async def purge_queue(self, request: web.Request) -> web.Response:
        removed = await self.service.purge_queue()
        return json_answer({"removed": removed, "status": "completed"})

    async def health(self, request: web.Request) -> web.Response:
        jobs, workers = await self.service.health()
        return json_answer(health_body(jobs, workers))
