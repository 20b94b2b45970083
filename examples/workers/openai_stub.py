"""OpenAI-compatible chat worker stub: the shape of a vLLM server behind lbproxy, without a model.

It answers ``POST /v1/chat/completions`` like vLLM's OpenAI server does, streamed as server-sent events
(``stream: true``) or as one JSON body, with deterministic tokens made from the prompt, so that clients,
proxies and load tests see realistic token-by-token streams on a machine without a GPU. Only stdlib + aiohttp.

Worker contract: ``GET /ping`` (and vLLM's ``GET /health``) answer 204 while the "model" loads, 200 once ready.

Environment:
    PORT                    app port (required); PORT_HEALTH serves /ping too when it differs
    HOST                    bind address (default 127.0.0.1)
    LBPROXY_WORKER_ID       worker id, in the ``system_fingerprint`` of every answer (default: the pid)
    OPENAI_STUB_MODEL       the served model id (default ``stub-model``); another ``model`` gets 404
    OPENAI_STUB_LOAD_SECONDS  simulated model load time, /ping answers 204 meanwhile (default 0)
    OPENAI_STUB_TOKEN_DELAY seconds between streamed tokens (default 0.02)

Routes:
    GET  /v1/models                the one model
    POST /v1/chat/completions      messages -> tokens. The answer to a conversation whose last user message
                                   is "a b c" is the tokens "You", " said", ":", " a", " b", " c", "." (cut to
                                   max_tokens / max_completion_tokens, finish_reason "length" then, else
                                   "stop"). stream: true sends ``data: {chunk}`` events (the first carries the
                                   assistant role, one per token, a last one with finish_reason, a usage chunk
                                   with stream_options.include_usage) and ends with ``data: [DONE]``.
Errors use OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with 400 or 404.

SIGTERM/SIGINT: stop listening, let in-flight streams finish, exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from typing import Any

from aiohttp import web

WORKER_ID = os.environ.get("LBPROXY_WORKER_ID") or str(os.getpid())
MODEL = os.environ.get("OPENAI_STUB_MODEL", "stub-model")
CREATED = int(time.time())


class State:
    ready = False


def tokens_for(messages: list[dict[str, Any]]) -> list[str]:
    """The deterministic answer: "You said: <last user message>." as word tokens."""
    text = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            text = str(content or "")
            break
    return ["You", " said", ":", *(f" {word}" for word in text.split()), "."]


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "").split()) + 1 for m in messages)


def _validate(body: Any) -> web.Response | tuple[list[dict[str, Any]], int, bool, bool]:
    """The request's messages, max tokens, stream and include_usage flags, or the error to answer."""
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    model = body.get("model")
    if model is not None and model != MODEL:
        return _error(404, f"The model `{model}` does not exist.", "model", "NotFoundError", "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return _error(400, "messages: a non-empty list of {role, content} objects is required.", "messages")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        limit = 256
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return _error(400, "max_tokens must be a positive integer.", "max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return _error(400, "stream must be true or false.", "stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return messages, limit, stream, include_usage


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "The request body is not valid JSON.")
    checked = _validate(body)
    if isinstance(checked, web.Response):
        return checked
    messages, limit, stream, include_usage = checked
    answer = tokens_for(messages)
    tokens = answer[:limit]
    finish = "length" if len(answer) > limit else "stop"
    usage = {"prompt_tokens": _prompt_tokens(messages), "completion_tokens": len(tokens),
             "total_tokens": _prompt_tokens(messages) + len(tokens)}
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    common = {"id": ident, "created": int(time.time()), "model": MODEL, "system_fingerprint": WORKER_ID}
    if not stream:
        return web.json_response({
            **common, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        })

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)

    async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
        chunk = {**common, "object": "chat.completion.chunk", "choices": choices, **extra}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

    delay = float(os.environ.get("OPENAI_STUB_TOKEN_DELAY", "0.02"))
    await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}])
    for token in tokens:  # a client that went away raises here and ends the generation
        await asyncio.sleep(delay)
        await send([{"index": 0, "delta": {"content": token}, "logprobs": None, "finish_reason": None}])
    await send([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
    if include_usage:
        await send([], usage=usage)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": MODEL, "object": "model", "created": CREATED, "owned_by": "lbproxy-examples"}]})


async def ping(request: web.Request) -> web.Response:
    return web.Response(status=200 if State.ready else 204)


def make_app(*, app_routes: bool) -> web.Application:
    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", ping)
    if app_routes:
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", chat_completions)
    return app


async def _load(seconds: float) -> None:
    await asyncio.sleep(seconds)  # the "model" loads; /ping answers 204 meanwhile
    State.ready = True


async def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ["PORT"])
    health_port = int(os.environ.get("PORT_HEALTH") or port)
    runners = [web.AppRunner(make_app(app_routes=True))]
    if health_port != port:
        runners.append(web.AppRunner(make_app(app_routes=False)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for runner, site_port in zip(runners, [port, health_port], strict=False):
            await runner.setup()
            await web.TCPSite(runner, host, site_port).start()
        load = asyncio.create_task(_load(float(os.environ.get("OPENAI_STUB_LOAD_SECONDS", "0"))))
        print(f"openai stub {WORKER_ID} serving {MODEL} on {port} (health {health_port})", flush=True)
        await stop.wait()
        load.cancel()
    finally:
        await asyncio.gather(*(runner.cleanup() for runner in runners))
    return 0


if __name__ == "__main__":
    if not os.environ.get("PORT"):
        print("openai stub: PORT is required", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(asyncio.run(main()))
