"""A plain HTTP worker for ``queue.delivery: http``: no SDK, just the load-balancer worker contract plus
``POST /run`` taking ``{"id", "input"}``. input.stream=N answers N NDJSON lines (each padded with
input.line_bytes characters); input.sleep waits;
input.status answers that HTTP status; input.exit crashes the worker."""

import asyncio
import json
import os

from aiohttp import web


async def ping(request):
    return web.Response(text="ok")


async def run(request):
    job = await request.json()
    data = job["input"] if isinstance(job["input"], dict) else {}
    await asyncio.sleep(float(data.get("sleep", 0)))
    if data.get("exit"):
        os._exit(1)  # a crash mid-job
    if "status" in data:
        return web.json_response({"bad": True}, status=int(data["status"]))
    if "stream" in data:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for i in range(int(data["stream"])):
            line = {"token": i, **({"pad": "x" * int(data["line_bytes"])} if "line_bytes" in data else {})}
            await resp.write(json.dumps(line).encode() + b"\n")
        await resp.write_eof()
        return resp
    return web.json_response({"id": job["id"], "echo": job["input"], "worker": os.environ["LBPROXY_WORKER_ID"]})


app = web.Application()
app.router.add_get("/ping", ping)
app.router.add_post("/run", run)
web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)
