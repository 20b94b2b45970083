"""The `queue:` settings and the command's answers for queue endpoints: clear errors, exit code 2."""

from __future__ import annotations

import pytest

from lbproxy.config import ConfigError, load_config, parse_config

from ..conftest import ROOT
from ..test_cli import lbproxy


def test_queue_defaults_follow_runpod():
    q = parse_config({"name": "q", "type": "queue"}, {}).queue
    assert (q.retention, q.sync_retention, q.max_attempts, q.delivery) == (1800, 60, 3, "sdk")
    assert (q.max_run_body, q.max_runsync_body, q.max_result_size) == (10_000_000, 20_000_000, 20_000_000)
    assert (q.webhook_retries, q.webhook_retry_delay) == (2, 10)
    assert q.worker_listen.host == "127.0.0.1" and q.worker_listen.port == 0


@pytest.mark.parametrize("queue, problem", [
    ({"store": "postgres://db/q"}, "queue.store: must start with sqlite:"),
    ({"lease": "3s", "ping_interval": "2s"}, "queue.lease: must be at least two ping intervals (4s)"),
    ({"stop_grace": "4s", "ping_interval": "2s"}, "queue.stop_grace: must be more than two ping intervals (4s)"),
    ({"max_attempts": 0}, "queue.max_attempts:"),
    ({"delivery": "push"}, "queue.delivery: must be 'sdk' or 'http'"),
    ({"retention": "forever"}, "queue.retention: invalid duration"),
    ({"max_run_body": "big"}, "queue.max_run_body: invalid size"),
    ({"shards": 2}, "queue.shards:"),
])
def test_bad_queue_settings_name_the_key(queue, problem):
    with pytest.raises(ConfigError) as exc:
        parse_config({"name": "q", "type": "queue", "queue": queue}, {})
    assert any(p.startswith(problem) for p in exc.value.problems), exc.value.problems


def test_serve_refuses_a_queue_endpoint_on_kubernetes_with_exit_2(tmp_path):
    cfg = tmp_path / "q.yaml"
    cfg.write_text("name: q\ntype: queue\nworker: {image: img:1}\nbackend: {type: kubernetes}\n")
    r = lbproxy("serve", str(cfg))
    assert r.returncode == 2 and "type: queue:" in r.stderr and "Traceback" not in r.stderr


def test_serve_exits_2_when_the_job_store_cannot_be_opened(tmp_path):
    (tmp_path / "dir.db").mkdir()
    cfg = tmp_path / "q.yaml"
    cfg.write_text(f"name: q\ntype: queue\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\n"
                   f"queue: {{store: 'sqlite:///{tmp_path}/dir.db'}}\nworker: {{command: [python3, w.py]}}\n")
    r = lbproxy("serve", str(cfg))
    assert r.returncode == 2 and "cannot open the job store" in r.stderr


def test_the_queue_example_passes_check():
    config = load_config(ROOT / "examples" / "queue.yaml", environ={})
    assert config.type == "queue"
    r = lbproxy("check", "examples/queue.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
