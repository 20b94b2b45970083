"""Every example worker, with its example config, served through a real `lbproxy serve` over loopback HTTP.

The configs are used as written (examples/*.yaml) except for their addresses: the `start_endpoint` fixture puts
lbproxy on free ports, starts it from the repository root (the worker commands are relative paths) and checks at
teardown that lbproxy exits cleanly and leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import httpx
import pytest
import yaml

from .conftest import ROOT, until

EXAMPLES = ROOT / "examples"


def example(name: str) -> dict[str, Any]:
    """An example config without its addresses (the fixture chooses free ones)."""
    config: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    config.pop("listen")
    config.pop("admin")
    return config


async def sse_events(response: httpx.Response) -> list[tuple[float, str]]:
    """The `data:` payloads of a server-sent event stream, each with the time it arrived."""
    events, buffer = [], ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            for line in event.splitlines():
                if line.startswith("data: "):
                    events.append((time.monotonic(), line[len("data: "):]))
    assert buffer == "", f"stream ended inside an event: {buffer!r}"
    return events


def test_example_configs_pass_lbproxy_check():
    from lbproxy.checks import backend_problems
    from lbproxy.config import load_config

    for name in ("echo.yaml", "openai.yaml", "realtime.yaml"):
        config = load_config(EXAMPLES / name, environ={})
        assert backend_problems(config) == [], name
        assert config.worker.command is not None
        assert (ROOT / config.worker.command[1]).is_file(), name


# ----------------------------------------------------------------------------------------------------- echo


@pytest.mark.slow
async def test_echo_example_answers_and_streams_through_lbproxy(start_endpoint):
    ep = await start_endpoint(**example("echo.yaml"))
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(f"{ep.url}/echo/hello?x=1")  # waits for a cold start (ECHO_INIT_DELAY: 1)
        assert r.status_code == 200
        assert r.json()["raw_path"] == "/echo/hello?x=1"
        assert r.headers["x-lbproxy-worker-id"] == r.json()["worker"]
        async with client.stream("GET", f"{ep.url}/stream?n=5") as s:
            chunks = [line async for line in s.aiter_lines()]
        assert [c.split(".")[0] for c in chunks] == [f"chunk-{i}" for i in range(5)]
        cost = (await ep.status())["cost"]  # the example bills its workers at the 24gb price
        assert cost["priced"] and set(cost["by_category"]) == {"24gb"} and cost["max_per_hour"] == 5
        assert cost["rate_dollars_per_hour"] == pytest.approx(0.00019 * 3600)


# ---------------------------------------------------------------------------------------- OpenAI chat stub

CHAT = {"model": "stub-model", "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "hello there general kenobi"}]}
ANSWER = ["You", " said", ":", " hello", " there", " general", " kenobi", "."]


@pytest.mark.slow
async def test_openai_example_streams_a_chat_completion_token_by_token(start_endpoint):
    ep = await start_endpoint(**example("openai.yaml"))
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(timeout=60) as client, \
            client.stream("POST", f"{ep.url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-lbproxy-worker-id"]
        events = await sse_events(response)

    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    token_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [c["choices"][0]["delta"]["content"] for c in token_chunks] == ANSWER  # in order, none lost
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(ANSWER)
    # Streamed, not buffered: the tokens arrived over time (0.05 s apart at the worker).
    arrivals = [at for (at, data) in events[:-1] if '"content": "' in data and '"content": ""' not in data]
    assert arrivals[-1] - arrivals[0] > 0.5 * 0.05 * (len(ANSWER) - 1)


@pytest.mark.slow
async def test_openai_example_answers_whole_completions_and_openai_errors(start_endpoint):
    ep = await start_endpoint(**example("openai.yaml"))
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.post(f"{ep.url}/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        completion = r.json()
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"] == {"role": "assistant", "content": "".join(ANSWER)}
        assert completion["choices"][0]["finish_reason"] == "stop"

        r = await client.post(f"{ep.url}/v1/chat/completions", json={**CHAT, "max_tokens": 3})
        assert r.json()["choices"][0]["message"]["content"] == "You said:"
        assert r.json()["choices"][0]["finish_reason"] == "length"

        r = await client.get(f"{ep.url}/v1/models")
        assert [m["id"] for m in r.json()["data"]] == ["stub-model"]

        r = await client.post(f"{ep.url}/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await client.post(f"{ep.url}/v1/chat/completions", json={"messages": []})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"

        async def stream_text(text: str) -> str:
            body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": text}]}
            async with client.stream("POST", f"{ep.url}/v1/chat/completions", json=body) as response:
                events = await sse_events(response)
            assert events[-1][1] == "[DONE]"
            return "".join(json.loads(d)["choices"][0]["delta"].get("content", "")
                           for _, d in events[:-1] if json.loads(d)["choices"])

        texts = [f"stream number {i}" for i in range(4)]  # concurrent streams share the worker (concurrency 16)
        assert await asyncio.gather(*map(stream_text, texts)) == [f"You said: {t}." for t in texts]


# ------------------------------------------------------------------------------------ realtime WebSocket


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 30)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    event: dict[str, Any] = json.loads(msg.data)
    return event


async def until_done(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    deltas = []
    while (event := await receive(ws))["type"] == "response.delta":
        deltas.append(event)
    assert event["type"] == "response.done", event
    return deltas, event


@pytest.mark.slow
async def test_realtime_example_streams_a_session_token_by_token(start_endpoint):
    ep = await start_endpoint(**example("realtime.yaml"))
    ws_url = ep.url.replace("http://", "ws://") + "/v1/realtime"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        created = await receive(ws)
        assert created["type"] == "session.created" and created["worker"]

        await ws.send_json({"type": "input_text", "text": "hello realtime world"})
        await ws.send_json({"type": "response.create"})
        deltas, done = await until_done(ws)
        assert [d["delta"] for d in deltas] == ["Turn", " 1", ":", " hello", " realtime", " world", "."]
        assert [d["index"] for d in deltas] == list(range(7))
        assert {d["response"] for d in deltas} == {done["response"]}
        assert done["status"] == "completed" and done["tokens"] == 7

        # The session holds its worker slot while it is open.
        status = await ep.status()
        assert [(w["id"], w["in_flight"]) for w in status["workers"]] == [(created["worker"], 1)]

        await ws.send_json({"type": "input_text", "text": "second turn"})
        await ws.send_json({"type": "response.create", "max_tokens": 2})
        deltas, done = await until_done(ws)
        assert [d["delta"] for d in deltas] == ["Turn", " 2"]
        assert done["status"] == "incomplete"

        await ws.send_str("not json")
        assert (await receive(ws))["type"] == "error"  # and the session goes on

        await ws.send_json({"type": "session.close"})
        closing = await asyncio.wait_for(ws.receive(), 30)
        assert closing.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1000


@pytest.mark.slow
async def test_realtime_example_cancels_an_answer_mid_stream(start_endpoint):
    ep = await start_endpoint(**example("realtime.yaml"))
    ws_url = ep.url.replace("http://", "ws://") + "/v1/realtime"
    words = " ".join(f"w{i}" for i in range(200))  # 200+ tokens at 0.05 s: ten seconds unless cancelled
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        await receive(ws)
        await ws.send_json({"type": "input_text", "text": words})
        await ws.send_json({"type": "response.create"})
        first = [await receive(ws) for _ in range(3)]
        assert [e["delta"] for e in first] == ["Turn", " 1", ":"]
        await ws.send_json({"type": "response.cancel"})
        deltas, done = await until_done(ws)
        assert done["status"] == "cancelled"
        assert 3 <= done["tokens"] < 50
        assert [d["index"] for d in deltas] == list(range(3, done["tokens"]))

    async def idle() -> bool:
        return [w["in_flight"] for w in (await ep.status())["workers"]] == [0]

    await until(idle, 10, "the closed session to release its worker slot")

