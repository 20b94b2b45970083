"""The admin dashboard in a real headless browser: Debian's chromium, driven by selenium through Debian's
chromium-driver (no browser download), against a real ``lbproxy serve`` with echo workers.

``./test.sh`` installs both packages when they are missing. The screenshot is a test artifact:
``tests/artifacts/dashboard.png`` (gitignored), its path printed.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from .conftest import ROOT, until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "tests" / "artifacts"
# Without the background-networking flags Chromium tries to reach the internet (updates, field trials).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--window-size=1400,1700", "--lang=en-GB")

pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: apt-get install -y chromium chromium-driver (test.sh does)"
    profile = tempfile.mkdtemp(prefix="lbproxy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium never looks for (or downloads) one of its own.
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def js(driver: webdriver.Chrome, script: str) -> Any:
    return await asyncio.to_thread(driver.execute_script, script)


async def until_js(driver: webdriver.Chrome, script: str, what: str, timeout: float = 30.0) -> Any:
    async def check() -> Any:
        return await js(driver, script)
    return await until(check, timeout, what, interval=0.2)


WORKER_ROWS = """return [...document.querySelectorAll('#workers tbody tr')].map(tr =>
    [...tr.querySelectorAll('td')].map(td => td.textContent))"""
# The table's one row once its worker is ready and billed: [id, state, ..., tier, category, ..., billed s, $].
ONE_READY_BILLED = WORKER_ROWS.replace("return ", "const r = ") + \
    "; return r.length === 1 && r[0][1] === 'ready' && +r[0][8] > 0 ? r : null"


async def test_dashboard_charts_and_worker_table_follow_the_traffic(start_endpoint: Callable[..., Any],
                                                                     browser: webdriver.Chrome, client) -> None:
    ep = await start_endpoint(workers={"max": 2, "concurrency": 4}, cost={"category": "24gb"},
                              worker={"env": {"ECHO_INIT_DELAY": "0.5"}},
                              auth={"api_keys": ["k-dash-secret"]})
    await asyncio.to_thread(browser.get, ep.admin + "/")
    await until_js(browser, "return window.lbproxyDashboard && window.lbproxyDashboard.state.polls >= 1",
                   "the page's first poll")
    assert await js(browser, "return document.querySelectorAll('.uplot canvas').length") >= 6
    assert await js(browser, WORKER_ROWS) == [["no workers: the next request starts one"]]

    auth = {"Authorization": "Bearer k-dash-secret"}
    deadline = time.monotonic() + 60
    ok = 0
    while ok < 30 and time.monotonic() < deadline:  # bounded: 30 answered requests, a minute at most
        batch = await asyncio.gather(*(client.get(ep.url + "/sleep?s=0.2", headers=auth) for _ in range(3)),
                                     client.get(ep.url + "/status/503", headers=auth))
        ok += sum(r.status_code == 200 for r in batch)
    assert ok >= 30

    # The charts draw what the proxy saw: 2xx and 5xx rates, a ready worker, a cold start, a cost rate.
    await until_js(browser, "return Math.max(0, ...window.lbproxyDashboard.drawn('requests')[1]) > 0",
                   "a 2xx rate drawn")
    await until_js(browser, "return Math.max(0, ...window.lbproxyDashboard.drawn('requests')[4]) > 0",
                   "a 5xx rate drawn")
    await until_js(browser, "return Math.max(0, ...window.lbproxyDashboard.drawn('workers')[2]) >= 1",
                   "a ready worker drawn")
    await until_js(browser, "return Math.max(0, ...window.lbproxyDashboard.drawn('cold_starts')[1]) >= 1",
                   "a cold start drawn")
    await until_js(browser, "return Math.max(0, ...window.lbproxyDashboard.drawn('cost')[1]) > 0.5",
                   "the cost rate drawn ($0.684/h for one 24gb flex worker)")

    # The worker table: the worker, ready, on the 24gb price, its billed seconds growing poll by poll.
    rows = await until_js(browser, ONE_READY_BILLED, "a ready worker with billed seconds in the table")
    worker, billed = rows[0][0], int(rows[0][8])
    assert rows[0][3:5] == ["flex", "24gb"] and rows[0][9].startswith("$")
    await until_js(browser, WORKER_ROWS.replace("return ", "const r = ") +
                   f"; return r.length === 1 && r[0][0] === {worker!r} && +r[0][8] > {billed}",
                   "the worker's billed seconds to grow")
    decisions = await js(browser, "return document.querySelector('#decisions tbody').textContent")
    assert "cold start" in decisions
    cards = await js(browser, "return document.querySelector('#cards').textContent")
    assert "Spent, last hour$0.0" in cards and "Efficiency" in cards

    page = await js(browser, "return document.documentElement.outerHTML")
    assert "k-dash-secret" not in page
    errors = [entry for entry in await asyncio.to_thread(browser.get_log, "browser") if entry["level"] == "SEVERE"]
    assert not errors, errors

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    await asyncio.to_thread(browser.save_screenshot, str(shot))
    print(f"\ndashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000


async def test_a_queue_endpoint_s_dashboard_draws_its_client_requests_workers_and_cost(
        start_endpoint: Callable[..., Any], browser: webdriver.Chrome, client) -> None:
    worker = ROOT / "tests" / "queue" / "http_job_worker.py"
    ep = await start_endpoint(type="queue", workers={"active": 0, "max": 1, "concurrency": 2},
                              queue={"delivery": "http"}, cost={"category": "24gb"},
                              worker={"command": [sys.executable, str(worker)], "stop_grace": "1s"})
    await asyncio.to_thread(browser.get, ep.admin + "/")
    await until_js(browser, "return window.lbproxyDashboard && window.lbproxyDashboard.state.polls >= 1",
                   "the page's first poll")
    base = f"{ep.url}/v2/{ep.config['name']}"
    for i in range(5):
        r = await client.post(f"{base}/runsync", json={"input": {"n": i}})
        assert r.json()["status"] == "COMPLETED", r.text
    await until_js(browser, "return Math.max(0, ...window.lbproxyDashboard.drawn('requests')[1]) > 0",
                   "the client API's 2xx rate drawn")
    await until_js(browser, "return Math.max(0, ...window.lbproxyDashboard.drawn('cost')[1]) > 0.5",
                   "the cost rate drawn ($0.684/h for one 24gb flex worker)")
    rows = await until_js(browser, ONE_READY_BILLED, "the ready worker with billed seconds in the table")
    assert rows[0][3:5] == ["flex", "24gb"]
    errors = [entry for entry in await asyncio.to_thread(browser.get_log, "browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
