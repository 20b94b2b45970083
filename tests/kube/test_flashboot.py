"""flashboot node labels expire: which labels go (pure), and lbproxy removing them from the emulator's nodes."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from lbproxy.backends.kubernetes import FLASHBOOT_RETENTION
from lbproxy.kube.placement import expired_flashboot_nodes

from ..conftest import until
from .kubelet import Kubelet
from .store import Event

NS = "default"
KEY = "flashboot.lbproxy.io/test"  # the endpoint of serve_k8s is named "test"
DAY = 24 * 3600
NOW = 1_750_000_000.0

# -- which labels go: pure ---------------------------------------------------------------------------------


def test_labels_older_than_the_retention_go_and_recent_ones_stay():
    values = {"old": str(int(NOW) - DAY - 1), "edge": str(int(NOW) - DAY), "recent": str(int(NOW) - 60),
              "now": str(int(NOW))}
    assert expired_flashboot_nodes(values, NOW, set(), DAY) == ["old"]


@pytest.mark.parametrize("value", ["", "yesterday", "1.7e9", "+1749999000", "-1", "1_749_999_000", " 1749999000",
                                   "17499990000000000000"])
def test_a_value_that_is_not_a_unix_time_goes(value):
    assert expired_flashboot_nodes({"n": value}, NOW, set(), DAY) == ["n"]


def test_a_time_far_in_the_future_goes_but_clock_skew_is_tolerated():
    values = {"skewed": str(int(NOW) + 30), "far": str(int(NOW) + DAY + 1)}
    assert expired_flashboot_nodes(values, NOW, set(), DAY) == ["far"]


def test_nodes_running_a_worker_keep_their_label_whatever_its_value():
    values = {"busy-old": "1", "busy-bad": "x", "idle-old": "1", "idle-bad": "x"}
    assert expired_flashboot_nodes(values, NOW, {"busy-old", "busy-bad", "elsewhere"}, DAY) == ["idle-bad", "idle-old"]
    assert expired_flashboot_nodes({}, NOW, {"busy"}, DAY) == []


def test_the_retention_is_a_day():
    assert FLASHBOOT_RETENTION == DAY


# -- lbproxy against the API emulator -----------------------------------------------------------------------


def node_labels(emulator: Any, name: str) -> dict[str, str]:
    labels: dict[str, str] = emulator.get("nodes", None, name)["metadata"].get("labels") or {}
    return labels


def add_node(emulator: Any, name: str, labels: dict[str, str]) -> None:
    emulator.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})


@pytest.mark.slow
async def test_stale_labels_of_this_endpoint_are_removed_and_the_others_stay(serve_k8s, emulator, core):
    now = int(time.time())
    async with Kubelet(emulator):
        # A first lbproxy starts a worker, which labels its node; then lbproxy stops and the worker stays.
        ep = await serve_k8s(workers={"active": 1})
        [worker] = await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "the active worker")
        busy = emulator.get("pods", NS, worker["id"])["spec"]["nodeName"]
        await until(lambda: KEY in node_labels(emulator, busy), 10, "the worker's node to be labelled")
        ep.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(ep.proc.wait, 20) == 0

        # Meanwhile: the busy node's label is a month old (its worker ran all along), and other nodes carry
        # labels of every age, this endpoint's and another's.
        month_ago = str(now - 30 * DAY)
        await core.patch_node(busy, {"metadata": {"labels": {KEY: month_ago}}})
        add_node(emulator, "stale", {KEY: str(now - DAY - 3600), "zone": "a"})
        add_node(emulator, "garbage", {KEY: "yesterday"})
        add_node(emulator, "fresh", {KEY: str(now - 3600)})
        add_node(emulator, "other", {"flashboot.lbproxy.io/other": month_ago})
        add_node(emulator, "plain", {"zone": "a"})
        busy_labels: list[dict[str, str]] = []

        def on_change(event: Event) -> None:
            if event.rt.plural == "nodes" and event.obj["metadata"]["name"] == busy:
                busy_labels.append(dict(event.obj["metadata"].get("labels") or {}))

        emulator.on_change.append(on_change)
        ep2 = await serve_k8s(listen=ep.config["listen"], admin=ep.config["admin"], workers={"active": 1})
        await until(lambda: KEY not in node_labels(emulator, "stale") and KEY not in node_labels(emulator, "garbage"),
                    20, "the stale and the garbage label to be removed")
        assert node_labels(emulator, "stale") == {"zone": "a"}
        assert node_labels(emulator, "fresh") == {KEY: str(now - 3600)}
        assert node_labels(emulator, "other") == {"flashboot.lbproxy.io/other": month_ago}
        assert node_labels(emulator, "plain") == {"zone": "a"}
        # The node running the worker kept its label throughout, and got a current time.
        await until(lambda: int(node_labels(emulator, busy)[KEY]) >= now, 10, "the busy node's label refreshed")
        assert busy_labels and all(KEY in labels for labels in busy_labels), busy_labels
        # Only the nodes carrying this endpoint's label were listed.
        assert ("GET", "/api/v1/nodes", {"labelSelector": KEY}) in emulator.api.queries
        assert {q.get("labelSelector") for m, path, q in emulator.api.queries if path == "/api/v1/nodes"} == {KEY}
        assert "removed the stale label flashboot.lbproxy.io/test=yesterday from node garbage" in ep2.log()
        assert (await ep2.workers())[0]["id"] == worker["id"]


@pytest.mark.slow
async def test_a_node_where_a_worker_is_starting_keeps_its_old_label(serve_k8s, emulator):
    """The pod is bound but not running yet (its image is being pulled): no refresh yet, but no removal either."""
    ep = await serve_k8s(workers={"active": 1})
    [pod] = await until(lambda: emulator.pods(NS, "lbproxy.io/endpoint=test"), 10, "the worker pod")
    ep.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(ep.proc.wait, 20) == 0
    month_ago = str(int(time.time()) - 30 * DAY)
    add_node(emulator, "pulling", {KEY: month_ago})
    add_node(emulator, "stale", {KEY: month_ago})  # removed after "pulling" would be: the pass is over then
    emulator.registry.bind(NS, pod["metadata"]["name"], "pulling")
    ep2 = await serve_k8s(workers={"active": 1})
    await until(lambda: KEY not in node_labels(emulator, "stale"), 20, "the stale label to be removed")
    assert node_labels(emulator, "pulling") == {KEY: month_ago}
    assert [p["metadata"]["name"] for p in emulator.pods(NS, "lbproxy.io/endpoint=test")] == [pod["metadata"]["name"]]
    assert ep2.proc.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("verb, message", [
    ("list", "flashboot: no permission to list nodes; old flashboot labels are not removed"),
    ("patch", "flashboot: no permission to label nodes; recent-node preference is off"),
])
async def test_without_permission_the_expiry_turns_itself_off_once(serve_k8s, emulator, verb, message):
    emulator.forbid(verb, "nodes")
    stale = str(int(time.time()) - 30 * DAY)
    add_node(emulator, "stale", {KEY: stale})
    add_node(emulator, "stale-2", {KEY: stale})
    ep = await serve_k8s()
    await until(lambda: message in ep.log(), 20, f"lbproxy to log: {message}")
    assert ep.log().count(message) == 1, ep.log()[-3000:]
    assert node_labels(emulator, "stale") == node_labels(emulator, "stale-2") == {KEY: stale}
    status = await ep.status()
    assert ep.proc.poll() is None and status["backend"]["api_reachable"] is True
    assert any(n.startswith("flashboot:") for n in status["notices"]), status["notices"]  # added after start
