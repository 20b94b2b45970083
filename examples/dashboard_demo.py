"""Run examples/echo.yaml under a few minutes of bursty traffic and take a screenshot of its dashboard.

    .venv/bin/python examples/dashboard_demo.py [--seconds 240] [--out docs/dashboard.png]

It starts `lbproxy serve` on free loopback ports (its data directory in a temporary folder), sends bursts,
a steady trickle with some 404s and 503s, and a pause long enough for idle workers to be drained, then
opens the admin page in Debian's headless chromium (apt-get install chromium chromium-driver) and saves a
PNG. This is how docs/dashboard.png in the README was made. Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def traffic(url: str, seconds: float) -> None:
    """Bursts, a trickle with client and worker errors, and pauses: every phase shows on the charts."""
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60) as client:
        async def get(path: str) -> None:
            try:
                await client.get(url + path)
            except httpx.HTTPError:
                pass

        async def burst(n: int, sleep: float) -> None:
            await asyncio.gather(*(get(f"/sleep?s={sleep}") for _ in range(n)))

        async def trickle(duration: float, rate: float) -> None:
            stop = min(end, time.monotonic() + duration)
            sent: list[asyncio.Task[None]] = []
            while time.monotonic() < stop:
                i = len(sent) + 1
                path = "/status/404" if i % 9 == 0 else "/status/503" if i % 23 == 0 else "/sleep?s=0.3"
                sent.append(asyncio.create_task(get(path)))
                await asyncio.sleep(1 / rate)
            await asyncio.gather(*sent)

        while time.monotonic() < end:
            await burst(24, 1.5)
            await trickle(50, 6)
            await asyncio.sleep(min(30, max(0.0, end - time.monotonic())))  # idle: workers drain after 10 s
            await burst(12, 1.0)
            await trickle(35, 3)


def screenshot(admin: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="lbproxy-demo-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1640", "--hide-scrollbars", "--lang=en-GB", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(admin + "/")
        deadline = time.monotonic() + 30
        while not driver.execute_script("return window.lbproxyDashboard && window.lbproxyDashboard.state.polls >= 2"):
            if time.monotonic() > deadline:
                raise SystemExit("the dashboard did not load")
            time.sleep(0.2)
        # The whole page in one picture: a window as tall as the page, then one more poll to redraw.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, height + 160)
        polls = driver.execute_script("return window.lbproxyDashboard.state.polls")
        while driver.execute_script("return window.lbproxyDashboard.state.polls") <= polls:
            if time.monotonic() > deadline + 30:
                raise SystemExit("the dashboard stopped polling")
            time.sleep(0.2)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lbproxy-demo-") as tmp:
        config = yaml.safe_load((ROOT / "examples" / "echo.yaml").read_text())
        config["listen"], config["admin"] = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        path = Path(tmp) / "echo.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "LBPROXY_DATA_DIR": str(Path(tmp) / "data")}
        with (Path(tmp) / "lbproxy.log").open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "lbproxy", "serve", str(path)], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            url, admin = f"http://{config['listen']}", f"http://{config['admin']}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(admin + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("lbproxy did not start:\n" + (Path(tmp) / "lbproxy.log").read_text())
                time.sleep(0.1)
            asyncio.run(traffic(url, args.seconds))
            screenshot(admin, args.out)
            print(f"dashboard screenshot: {args.out}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
