"""The /ping prober under descriptor exhaustion: a probe lbproxy cannot send says nothing about the worker.

Runs in a child process whose open-files limit is then used up for real (EMFILE), so the test process itself
never runs short of descriptors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .conftest import ROOT

_SCRIPT = textwrap.dedent('''
    import asyncio, json, os, resource
    from aiohttp import web
    from lbproxy.health import HealthProber
    from lbproxy.policy import WorkerState
    from lbproxy.pool import WorkerPool

    async def main():
        app = web.Application()
        app.router.add_get("/ping", lambda r: web.Response(status=200))
        runner = web.AppRunner(app)
        await runner.setup()
        for _ in range(2):
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        port, other = (address[1] for address in runner.addresses)
        pool = WorkerPool(0, 10, 5.0)
        prober = HealthProber(pool, "/ping")
        await prober.start()
        w = pool.add("w1", "127.0.0.1", port, port)
        cold = pool.add("w2", "127.0.0.1", other, other)  # never probed yet: no connection to reuse
        for x in (w, cold):
            pool.set_state(x, WorkerState.READY)
        out = {"warm": await prober.probe(w)}
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        out["reused"] = await prober.probe(w)          # the kept-alive probe connection needs no descriptor
        out["exhausted"] = await prober.probe(cold)     # needs a new socket, and there is none
        for fd in held:
            os.close(fd)
        out["after"] = await prober.probe(cold)
        await prober.close()
        await runner.cleanup()
        print(json.dumps(out))

    asyncio.run(main())
''')


def test_probes_reuse_their_connection_and_exhaustion_is_not_a_failure():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # -1 is readiness.NOT_ASKED: lbproxy could not open a socket, so it learnt nothing about the worker.
    assert out == {"warm": 200, "reused": 200, "exhausted": -1, "after": 200}


async def test_a_request_failure_wakes_the_prober_at_once():
    """A ready worker that failed a request is probed now, not at the next 1 s interval, so a worker that is
    fine is back in rotation in milliseconds."""
    import asyncio

    from aiohttp import web

    from lbproxy.health import READY_INTERVAL, HealthProber
    from lbproxy.policy import WorkerState
    from lbproxy.pool import WorkerPool

    probes: list[float] = []

    async def ping(request: web.Request) -> web.Response:
        probes.append(asyncio.get_running_loop().time())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    pool = WorkerPool(0, 10, 5.0)
    prober = HealthProber(pool, "/ping")
    await prober.start()
    ready = asyncio.Event()
    pool.on_state_change(lambda w, old: ready.set() if w.state is WorkerState.READY else None)
    try:
        w = pool.add("w1", "127.0.0.1", port, port)
        prober.watch(w)
        async with asyncio.timeout(10):
            await ready.wait()
        ready.clear()
        seen = len(probes)  # the prober now waits READY_INTERVAL before its next probe
        failed_at = asyncio.get_running_loop().time()
        pool.set_state(w, WorkerState.UNHEALTHY, "failed a request")
        async with asyncio.timeout(10):
            await ready.wait()
        assert len(probes) == seen + 1
        assert probes[-1] - failed_at < READY_INTERVAL / 2, "probed at the next interval, not at once"
    finally:
        await prober.close()
        await runner.cleanup()
