"""The tests' kubelet and scheduler: real echo worker processes for the emulator's pods.

Each pod gets its own loopback address (127.0.0.N), where a real echo worker listens on the pod's container
port, and the pod is marked Running with that IP. Pods of a "full" GPU pool are left Pending/Unschedulable.
A deleted pod's worker gets SIGTERM, and the pod is removed once the worker exited (graceful termination).
The container's env is resolved as the kubelet does: plain values, the downward API's ``metadata.name``,
``secretKeyRef`` from the emulator's Secrets, and ``$(VAR)`` references to variables defined before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..conftest import ECHO

_ips = itertools.count(10)


class Kubelet:
    def __init__(self, emulator: Any, namespace: str = "default", env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        self.emulator = emulator
        self.namespace = namespace
        self.env = env or {}
        self.command = command or [sys.executable, str(ECHO)]  # what every pod's container runs
        self.full_pools: set[str] = set()  # lbproxy.io/pool values whose pods cannot be scheduled
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.ips: dict[str, str] = {}
        self.started: list[str] = []  # pod names, in start order
        self._task: asyncio.Task[None] | None = None
        self._log_dir: Path | None = None

    async def __aenter__(self) -> Kubelet:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for proc in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    async def _run(self) -> None:
        while True:
            for pod in self.emulator.pods(self.namespace, "lbproxy.io/endpoint"):
                await self._sync(pod)
            await asyncio.sleep(0.02)

    def _env(self, entries: list[dict[str, Any]], pod_name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in entries:
            if "value" in e:  # $(VAR) expands variables defined earlier; $$ is a literal $; others stay
                env[e["name"]] = re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                        lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), e["value"])
                continue
            source = e.get("valueFrom", {})
            if source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[e["name"]] = pod_name
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.emulator.get("secrets", self.namespace, ref["name"])
                assert secret is not None, f"pod {pod_name}: no Secret {ref['name']} (a kubelet would not start it)"
                env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env

    async def _sync(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        name = meta["name"]
        if meta.get("deletionTimestamp"):
            proc = self.workers.pop(name, None)
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 10)
            if self.emulator.get("pods", self.namespace, name) is not None:  # unscheduled pods go at once
                self.emulator.finish_deletion(self.namespace, name)
            return
        if name in self.workers or status.get("phase") == "Running":
            return
        pool = meta.get("labels", {}).get("lbproxy.io/pool", "")
        if pool in self.full_pools:
            conditions = status.get("conditions") or []
            if not any(c.get("reason") == "Unschedulable" for c in conditions):
                self.emulator.set_pod_unschedulable(self.namespace, name, "0/3 nodes have a free nvidia.com/gpu")
            return
        container = pod["spec"]["containers"][0]
        env = self._env(container.get("env", []), name)
        ip = self.ips.setdefault(name, f"127.0.0.{next(_ips)}")
        proc_env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "LBPROXY_"))}
        proc_env.update(env)
        proc_env.update(self.env)
        proc_env.update({"HOST": ip, "LBPROXY_WORKER_ID": name})
        self.workers[name] = subprocess.Popen(self.command, env=proc_env, start_new_session=True,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started.append(name)
        node = f"node-{pool or 'any'}"
        if self.emulator.get("nodes", None, node) is None:
            self.emulator.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {}}})
        self.emulator.set_pod_running(self.namespace, name, ip=ip, node=node)
