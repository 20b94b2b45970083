"""What `check` and `serve` say about a valid config: risky choices, unservable settings, no-op settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_core import to_jsonable_python

from lbproxy.checks import backend_problems, notices, risk_warnings
from lbproxy.config import Config, parse_config
from lbproxy.config_fields import LOCAL_REFUSAL, refused_locally, settings

COMMAND = ["python3", "worker.py"]


def config(environ: dict[str, str] | None = None, **data: Any) -> Config:
    """A servable local config on loopback unless the test says otherwise."""
    data.setdefault("name", "demo")
    data.setdefault("listen", "127.0.0.1:8080")
    data.setdefault("worker", {"command": COMMAND})
    return parse_config(data, environ={} if environ is None else environ)


def warnings_about(key: str, **data: Any) -> list[str]:
    return [w for w in risk_warnings(config(**data)) if w.startswith(f"{key}: ")]


# ------------------------------------------------------------------------------------------ warnings


def test_defaults_on_loopback_have_no_warnings() -> None:
    assert risk_warnings(config()) == []


def test_single_max_worker_is_a_bottleneck() -> None:
    assert warnings_about("workers.max", workers={"max": 1}) == [
        "workers.max: 1 worker is a bottleneck and leaves no room to replace a failing one; set 2 or more"
    ]


def test_max_equal_to_active_warns_to_plan_20_percent_headroom() -> None:
    [warning] = warnings_about("workers.max", workers={"active": 10, "max": 10})
    assert warning.startswith("workers.max: equals workers.active (10)")
    assert "20% headroom (workers.max: 12)" in warning


def test_headroom_suggestion_adds_at_least_one_worker() -> None:
    [warning] = warnings_about("workers.max", workers={"active": 2, "max": 2})
    assert warning.endswith("(workers.max: 3)")


def test_headroom_suggestion_survives_huge_counts() -> None:
    [warning] = warnings_about("workers.max", workers={"active": 1_000_000, "max": 1_000_000})
    assert warning.endswith("(workers.max: 1200000)")


def test_max_above_active_has_no_headroom_warning() -> None:
    assert warnings_about("workers.max", workers={"active": 2, "max": 3}) == []


def test_single_always_on_worker_warns_once() -> None:
    assert len(warnings_about("workers.max", workers={"active": 1, "max": 1})) == 1


def test_disabled_execution_timeout_warns() -> None:
    [warning] = warnings_about("timeouts.execution", timeouts={"execution": "off"})
    assert "stuck request holds its worker forever" in warning


def test_open_auth_on_a_public_listen_address_warns() -> None:
    [warning] = warnings_about("auth.api_keys", listen="0.0.0.0:8080")
    assert "listen (0.0.0.0:8080) is not loopback" in warning
    assert "LBPROXY_API_KEYS" in warning


def test_open_auth_on_loopback_is_fine() -> None:
    assert warnings_about("auth.api_keys", listen="[::1]:8080") == []


def test_api_keys_from_the_file_or_env_close_a_public_listen_address() -> None:
    assert warnings_about("auth.api_keys", listen=":8080", auth={"api_keys": ["k"]}) == []
    with_env = config({"LBPROXY_API_KEYS": "k"}, listen=":8080")
    assert not [w for w in risk_warnings(with_env) if w.startswith("auth.api_keys")]


def test_admin_on_a_public_address_warns() -> None:
    [warning] = warnings_about("admin", admin="0.0.0.0:9090")
    assert warning.startswith("admin: 0.0.0.0:9090 is not loopback")


def test_idle_timeout_below_one_second_warns_of_churn() -> None:
    [warning] = warnings_about("timeouts.idle", timeouts={"idle": "500ms"})
    assert warning.startswith("timeouts.idle: 500ms") and "churn" in warning
    assert warnings_about("timeouts.idle", timeouts={"idle": "1s"}) == []


def test_queue_delay_above_ten_seconds_warns_of_slow_scale_up() -> None:
    [warning] = warnings_about("scaling.queue_delay", scaling={"queue_delay": "30s"})
    assert warning.startswith("scaling.queue_delay: 30s") and "slow scale-up" in warning
    assert warnings_about("scaling.queue_delay", scaling={"queue_delay": "10s"}) == []


def test_queue_delay_is_not_a_risk_when_request_count_scales() -> None:
    assert (
        warnings_about("scaling.queue_delay", scaling={"strategy": "request_count", "queue_delay": "1m"})
        == []
    )


def test_very_short_init_timeout_warns() -> None:
    [warning] = warnings_about("timeouts.init", timeouts={"init": "5s"})
    assert warning.startswith("timeouts.init: 5s is very short")
    assert warnings_about("timeouts.init", timeouts={"init": "10s"}) == []


def test_choices_the_product_page_allows_do_not_warn() -> None:
    allowed = config(flashboot=False, workers={"concurrency": 0}, scaling={"strategy": "request_count"})
    assert risk_warnings(allowed) == []


# ---------------------------------------------------------------------------------- backend problems


def test_a_local_config_with_a_command_is_servable() -> None:
    assert backend_problems(config()) == []


def test_local_backend_needs_a_worker_command() -> None:
    assert backend_problems(config(worker={})) == [
        "worker.command: required with the local backend (the argv that starts one worker)"
    ]


def test_gpu_categories_are_an_error_with_the_local_backend() -> None:
    assert backend_problems(config(gpu={"categories": ["80gb"]})) == [
        "gpu.categories: only the kubernetes backend places workers on GPU types; "
        "remove it or set backend.type: kubernetes"
    ]


@pytest.mark.parametrize(
    ("key", "data"),
    [
        ("gpu.types", {"gpu": {"types": ["H100"]}}),
        ("gpu.cuda_versions", {"gpu": {"cuda_versions": ["12.4"]}}),
        ("gpu.catalog", {"gpu": {"catalog": {"80gb": {"flex_price_per_s": 0.001}}}}),
        ("placement.data_centers", {"placement": {"data_centers": ["eu-1"]}}),
        ("placement.network_volume", {"placement": {"network_volume": "models"}}),
        ("placement.model", {"placement": {"model": "llama"}}),
        ("expose_ports", {"expose_ports": ["8888/http"]}),
        ("worker.image", {"worker": {"command": COMMAND, "image": "ghcr.io/acme/worker:1"}}),
        ("backend.namespace", {"backend": {"namespace": "gpu"}}),
        ("backend.kubeconfig", {"backend": {"kubeconfig": "~/.kube/config"}}),
    ],
)
def test_kubernetes_only_keys_set_in_the_file_are_errors_with_the_local_backend(key: str, data: Any) -> None:
    [problem] = backend_problems(config(**data))
    assert problem.startswith(f"{key}: ")
    assert problem.endswith("; remove it or set backend.type: kubernetes")


# Values for keys whose default cannot be written back (an empty argv) or cannot be served on Kubernetes.
_WRITABLE = {"worker.args": ["--model", "m"], "worker.image": "img:1"}


def _nested(key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {head: _nested(rest, value) if rest else value}


@pytest.mark.parametrize("key", list(refused_locally(Config)))
def test_every_kubernetes_only_key_of_the_model_is_refused_locally_with_its_reason(key: str) -> None:
    """The list is the model's field metadata (config_fields.kubernetes_only), not a list kept by hand."""
    setting = next(s for s in settings(Config) if s.key == key)
    data = _nested(key, _WRITABLE.get(key, to_jsonable_python(setting.field.default)))
    if key.startswith("worker."):
        data["worker"].setdefault("command", COMMAND)
    assert backend_problems(config(**data)) == [
        f"{key}: {setting.extra[LOCAL_REFUSAL]}; remove it or set backend.type: kubernetes"
    ]
    on_kubernetes = {**data, "backend": {"type": "kubernetes", **data.get("backend", {})},
                     "worker": {"image": "img:1", **data.get("worker", {})}}
    assert backend_problems(config(**on_kubernetes)) == []


def test_settings_without_the_metadata_are_accepted_locally() -> None:
    refused = refused_locally(Config)
    assert {"gpu.categories", "placement.model", "worker.image", "backend.node_labels", "expose_ports"} <= set(refused)
    assert not {"workers.gpus", "worker.port", "worker.command", "flashboot", "timeouts.idle"} & set(refused)


def test_kubernetes_only_keys_are_errors_even_at_their_default_values() -> None:
    """The file set them, so it was written for another backend (an error when set, not silently ignored)."""
    problems = backend_problems(config(gpu={"categories": []}, placement={"model": None}))
    assert [p.split(":")[0] for p in problems] == ["gpu.categories", "placement.model"]


def test_kubernetes_only_sections_left_out_are_no_problem() -> None:
    assert backend_problems(config(gpu={}, placement={})) == []


def test_queue_endpoints_are_served_by_the_local_backend() -> None:
    assert backend_problems(config(type="queue")) == []


def test_queue_endpoints_on_kubernetes_need_a_reachable_worker_api_and_the_workers_key() -> None:
    problems = backend_problems(config(type="queue", backend={"type": "kubernetes"}, worker={"image": "img:1"}))
    assert [p.split(":")[0] for p in problems] == ["queue.worker_url", "queue.worker_key_secret",
                                                   "queue.worker_listen"]
    assert "the Helm chart sets it" in problems[0]
    served = config(type="queue", backend={"type": "kubernetes"}, worker={"image": "img:1"},
                    queue={"worker_url": "http://q-proxy-worker-api:8081", "worker_key_secret": "q-worker-key",
                           "worker_listen": "0.0.0.0:8081"})
    assert backend_problems(served) == []
    loopback = config(type="queue", backend={"type": "kubernetes"}, worker={"image": "img:1"},
                      queue={"worker_url": "http://x:8081", "worker_key_secret": "k",
                             "worker_listen": "127.0.0.1:8081"})
    assert backend_problems(loopback) == []
    assert [w for w in risk_warnings(loopback) if w.startswith("queue.worker_listen: 127.0.0.1:8081 is loopback")]


def test_queue_settings_for_kubernetes_workers_are_refused_locally() -> None:
    problems = backend_problems(config(type="queue", queue={"worker_url": "http://x:1"}))
    assert [p.split(":")[0] for p in problems] == ["queue.worker_url"]


def test_kubernetes_backend_needs_an_image() -> None:
    problems = backend_problems(config(backend={"type": "kubernetes"}))
    assert (
        "worker.image: required with the kubernetes backend (the container image of one worker)" in problems
    )


def test_kubernetes_backend_with_an_image_can_be_served() -> None:
    k8s = config(backend={"type": "kubernetes"}, worker={"image": "img:1"}, gpu={"categories": ["80gb"]})
    assert backend_problems(k8s) == []


# ------------------------------------------------------------------------------------------- notices


def test_no_notices_for_a_plain_config() -> None:
    assert notices(config()) == []


def test_flashboot_set_in_the_file_has_no_effect_locally() -> None:
    assert notices(config(flashboot=False)) == [
        "flashboot: has no effect with the local backend (each worker is a fresh local process)"
    ]
    assert notices(config(flashboot=True, backend={"type": "kubernetes"})) == []


def test_ttl_set_in_the_file_only_applies_to_queue_endpoints() -> None:
    assert notices(config(timeouts={"ttl": "1h"})) == [
        "timeouts.ttl: only applies to queue endpoints; no effect with type: load_balancer"
    ]
    assert notices(config(type="queue", timeouts={"ttl": "1h"})) == []


def test_queue_settings_on_a_load_balancer_have_no_effect() -> None:
    assert notices(config(queue={"retention": "1h"}, worker={"command": COMMAND, "job_path": "/jobs"})) == [
        "queue: only applies to queue endpoints; no effect with type: load_balancer",
        "worker.job_path: only applies to queue endpoints; no effect with type: load_balancer",
    ]


def test_request_path_settings_a_queue_endpoint_replaces_are_noted() -> None:
    found = notices(config(type="queue", limits={"max_body_size": "1MB"}, timeouts={"wait": "5s"},
                           worker={"command": COMMAND, "health_path": "/health"}))
    assert [n.split(":")[0] for n in found] == ["limits.max_body_size", "timeouts.wait", "worker.health_path"]
    http = notices(config(type="queue", timeouts={"wait": "5s"},
                          queue={"delivery": "http", "ping_interval": "2s", "take_hold": "1s"},
                          worker={"command": COMMAND, "health_path": "/health", "job_path": "/jobs"}))
    assert [n.split(":")[0] for n in http] == ["timeouts.wait", "queue.ping_interval", "queue.take_hold"]
    assert "no effect with queue.delivery: http" in http[1]


def test_scaling_settings_of_the_other_strategy_have_no_effect() -> None:
    assert notices(config(scaling={"strategy": "request_count", "queue_delay": "2s"})) == [
        "scaling.queue_delay: no effect with scaling.strategy: request_count"
    ]
    assert notices(config(scaling={"requests_per_worker": 2}, workers={"concurrency": 1})) == [
        "scaling.requests_per_worker: only used by scaling.strategy: request_count (or workers.concurrency: 0)"
    ]
    # Unlimited concurrency: nothing waits in lbproxy's queue, so queue_delay scales by requests in flight.
    assert notices(config(scaling={"requests_per_worker": 2})) == []


def test_forward_authorization_without_keys_has_no_effect() -> None:
    [notice] = notices(config(auth={"forward_authorization": True}))
    assert notice.startswith("auth.forward_authorization: no effect without api keys")
    assert notices(config(auth={"forward_authorization": True, "api_keys": ["k"]})) == []


# -- combinations that can never scale (issue 10) --------------------------------------------------------


def test_the_default_scaling_has_no_never_scales_warning() -> None:
    """Unlimited concurrency with queue_delay scales by requests in flight (policy), so it is no warning."""
    assert risk_warnings(config(workers={"max": 3})) == []


def test_no_queue_and_no_active_worker_never_serves() -> None:
    [w] = warnings_about("limits.max_queue", limits={"max_queue": 0})
    assert "the endpoint never serves" in w


def test_no_queue_with_a_concurrency_limit_never_scales_by_queue_delay() -> None:
    [w] = warnings_about("limits.max_queue", limits={"max_queue": 0}, workers={"active": 1, "concurrency": 2})
    assert "never adds a worker beyond workers.active (1)" in w
    assert warnings_about("limits.max_queue", limits={"max_queue": 0}, workers={"active": 1, "concurrency": 2},
                          scaling={"strategy": "request_count"}) == []


def test_queue_delay_not_below_the_wait_never_scales() -> None:
    [w] = warnings_about("scaling.queue_delay", workers={"concurrency": 2},
                         scaling={"queue_delay": "10s"}, timeouts={"wait": "10s"})
    assert "never scales up" in w and "timeouts.wait (10s)" in w
    assert warnings_about("scaling.queue_delay", workers={"concurrency": 2},
                          scaling={"queue_delay": "3s"}, timeouts={"wait": "10s"}) == []


# ---------------------------------------------------------------------------------------------- cost


def test_a_spend_limit_below_the_active_workers_rate_warns() -> None:
    # 2 active 24gb workers at the active price: 2 x $0.00013/s = $0.94/h
    [warning] = warnings_about("cost.max_per_hour", workers={"active": 2, "max": 4},
                               cost={"category": "24gb", "max_per_hour": 0.5})
    assert "$0.5/h is below what workers.active (2) cost ($0.94/h)" in warning
    assert not warnings_about("cost.max_per_hour", workers={"active": 2, "max": 4},
                              cost={"category": "24gb", "max_per_hour": 1})
    assert not warnings_about("cost.max_per_hour", workers={"active": 2, "max": 4}, cost={"max_per_hour": 0.01})


def test_kubernetes_with_gpu_categories_refuses_cost_category() -> None:
    cfg = config(backend={"type": "kubernetes"}, worker={"image": "w:1"}, gpu={"categories": ["80gb"]},
                 cost={"category": "24gb"})
    assert any(p.startswith("cost.category: kubernetes bills each pod at its pool's GPU category")
               for p in backend_problems(cfg))
    plain = config(backend={"type": "kubernetes"}, worker={"image": "w:1"}, cost={"category": "24gb"})
    assert not any(p.startswith("cost.") for p in backend_problems(plain))
