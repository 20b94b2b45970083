"""The config file: defaults (DESIGN 2), every validation rule, and errors that name the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbproxy.catalog import BUILTIN_CATALOG
from lbproxy.config import Address, Config, ConfigError, ExposedPort, load_config, parse_config


def parse(environ: dict[str, str] | None = None, **data: Any) -> Config:
    data.setdefault("name", "demo")
    return parse_config(data, environ={} if environ is None else environ)


def problems(environ: dict[str, str] | None = None, **data: Any) -> list[str]:
    data.setdefault("name", "demo")
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ={} if environ is None else environ)
    return caught.value.problems


def only_problem(**data: Any) -> str:
    found = problems(**data)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------------------------- defaults


def test_a_name_alone_is_a_complete_config() -> None:
    assert parse().name == "demo"


def test_defaults_match_the_design_table() -> None:
    c = parse()
    assert c.type == "load_balancer"
    assert c.listen == Address("0.0.0.0", 8080)
    assert c.admin == Address("127.0.0.1", 9090)
    assert c.auth.api_keys == () and c.auth.forward_authorization is False
    assert (c.workers.active, c.workers.max, c.workers.gpus, c.workers.concurrency) == (0, 3, 1, 0)
    t = c.timeouts
    assert (t.idle, t.execution, t.wait, t.ttl, t.init, t.shutdown) == (5, 600, 120, 86400, 420, 30)
    assert (c.scaling.strategy, c.scaling.queue_delay, c.scaling.requests_per_worker) == ("queue_delay", 4, 4)
    assert (c.limits.max_body_size, c.limits.max_queue) == (30_000_000, 1000)
    assert (c.gpu.categories, c.gpu.types, c.gpu.cuda_versions, c.gpu.catalog) == ((), (), (), {})
    assert (c.placement.data_centers, c.placement.network_volume, c.placement.model) == ((), None, None)
    assert c.flashboot is True
    assert c.expose_ports == ()
    w = c.worker
    assert (w.command, w.image, w.port, w.health_port, w.health_path, w.env, w.stop_grace) == (
        None,
        None,
        80,
        80,
        "/ping",
        {},
        10,
    )
    assert (c.backend.type, c.backend.namespace, c.backend.kubeconfig) == ("local", None, None)


def test_config_is_frozen() -> None:
    c = parse()
    with pytest.raises(ValueError, match="frozen"):
        c.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        c.workers.max = 9  # type: ignore[misc]


def test_dump_is_plain_json_with_addresses_and_ports_as_text() -> None:
    c = parse(expose_ports=["8888/http"], listen="[::1]:81")
    dumped = json.loads(c.model_dump_json())
    assert dumped["listen"] == "[::1]:81"
    assert dumped["expose_ports"] == ["8888/http"]


def test_json_schema_can_be_generated_for_docs() -> None:
    schema = Config.model_json_schema()
    assert "name" in schema["required"]


# --------------------------------------------------------------------------------------- name and type


@pytest.mark.parametrize("name", ["demo", "a", "my-endpoint-2", "0abc", "a" * 63])
def test_name_accepts_dns_labels(name: str) -> None:
    assert parse(name=name).name == name


@pytest.mark.parametrize("name", ["Demo", "my_endpoint", "-a", "a-", "", "a" * 64, "a.b", "a b"])
def test_name_rejects_anything_but_a_dns_label(name: str) -> None:
    assert only_problem(name=name).startswith("name: must be a DNS-1123 label")


def test_missing_name_is_required() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({}, environ={})
    assert caught.value.problems == ["name: required"]


def test_type_must_be_load_balancer_or_queue() -> None:
    assert parse(type="queue").type == "queue"
    assert only_problem(type="batch") == "type: must be 'load_balancer' or 'queue'"


# ------------------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:8080", Address("0.0.0.0", 8080)),
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
        (":8080", Address("0.0.0.0", 8080)),
        ("[::1]:8080", Address("::1", 8080)),
        ("[::]:80", Address("::", 80)),
        ("localhost:65535", Address("localhost", 65535)),
        (8081, Address("0.0.0.0", 8081)),
    ],
)
def test_listen_accepts_host_port_forms(text: object, address: Address) -> None:
    assert parse(listen=text).listen == address


@pytest.mark.parametrize(
    "text",
    [
        "8080",
        "::1:8080",
        "[nothost]:80",
        "host:",
        "host:x",
        "host:65536",
        "a b:80",
        "host:-1",
        "",
        -1,
        True,
        [1],
        None,
    ],
)
def test_listen_rejects_other_forms(text: object) -> None:
    assert only_problem(listen=text).startswith("listen: must be HOST:PORT")


def test_address_prints_as_host_port_with_ipv6_in_brackets() -> None:
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(Address("127.0.0.1", 80)) == "127.0.0.1:80"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("example.com", False),
    ],
)
def test_address_knows_whether_it_is_loopback(host: str, loopback: bool) -> None:
    assert Address(host, 80).is_loopback() is loopback


def test_admin_must_not_share_the_proxy_port() -> None:
    assert only_problem(listen="0.0.0.0:9000", admin="127.0.0.1:9000").startswith("admin: must not use")


def test_admin_and_listen_may_both_use_ephemeral_ports() -> None:
    assert parse(listen="127.0.0.1:0", admin="127.0.0.1:0").admin.port == 0


# ------------------------------------------------------------------------------------------------ auth


def test_env_api_keys_are_added_to_the_file_keys() -> None:
    c = parse({"LBPROXY_API_KEYS": " k2, ,file-key ,k3,,"}, auth={"api_keys": ["file-key"]})
    assert c.auth.keys() == (b"file-key", b"k2", b"k3")


def test_env_api_keys_alone_enable_auth() -> None:
    assert parse({"LBPROXY_API_KEYS": "only"}).auth.keys() == (b"only",)


def test_env_api_keys_do_not_count_as_set_in_the_file() -> None:
    c = parse({"LBPROXY_API_KEYS": "k1"})
    assert not c.set_in_file("auth")
    assert not c.set_in_file("auth.api_keys")


def test_env_api_keys_with_whitespace_are_an_error() -> None:
    assert problems({"LBPROXY_API_KEYS": "a b"}) == ["LBPROXY_API_KEYS: keys must not contain whitespace"]


def test_env_api_keys_keep_bytes_that_are_not_utf8() -> None:
    """os.environ decodes such bytes with surrogateescape; keys() gives the original bytes back."""
    assert parse({"LBPROXY_API_KEYS": "a\udcffb"}).auth.keys() == (b"a\xffb",)


def test_parse_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBPROXY_API_KEYS", "from-env")
    assert parse_config({"name": "demo"}).auth.keys() == (b"from-env",)


def test_api_keys_never_appear_in_repr_str_or_dumps() -> None:
    c = parse({"LBPROXY_API_KEYS": "env-secret-1"}, auth={"api_keys": ["file-secret-2"]})
    shown = [
        repr(c),
        str(c),
        repr(c.auth),
        c.model_dump_json(),
        str(c.model_dump()),
        json.dumps(c.model_dump(mode="json")),
    ]
    for text in shown:
        assert "env-secret-1" not in text and "file-secret-2" not in text


@pytest.mark.parametrize(
    ("key", "reason"),
    [("", "must not be empty"), ("a b", "must not contain whitespace"), (12345678, "must be a string")],
)
def test_api_keys_must_be_single_words(key: object, reason: str) -> None:
    assert only_problem(auth={"api_keys": ["good", key]}) == f"auth.api_keys[1]: {reason}"


def test_api_key_errors_do_not_echo_the_key() -> None:
    assert "sec ret" not in only_problem(auth={"api_keys": ["sec ret"]})


def test_forward_authorization_is_a_boolean() -> None:
    assert parse(auth={"forward_authorization": True}).auth.forward_authorization is True
    assert (
        only_problem(auth={"forward_authorization": "maybe"})
        == "auth.forward_authorization: must be true or false"
    )


# --------------------------------------------------------------------------------------------- workers


def test_max_below_active_names_both_keys() -> None:
    assert only_problem(workers={"active": 2, "max": 1}) == "workers.max: must be >= workers.active (2)"


def test_max_equal_to_active_is_valid() -> None:
    assert parse(workers={"active": 3, "max": 3}).workers.max == 3


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("max", 0, "must be >= 1"),
        ("active", -1, "must be >= 0"),
        ("gpus", -1, "must be >= 0"),
        ("concurrency", -1, "must be >= 0"),
        ("max", 1.5, "must be a whole number"),
        ("max", "many", "must be an integer"),
        ("max", 10**100, "must be <= 1000000"),
    ],
)
def test_worker_counts_are_bounded_integers(key: str, value: object, reason: str) -> None:
    assert only_problem(workers={key: value}) == f"workers.{key}: {reason}"


def test_zero_gpus_and_zero_active_are_allowed() -> None:
    c = parse(workers={"gpus": 0, "active": 0})
    assert (c.workers.gpus, c.workers.active) == (0, 0)


# -------------------------------------------------------------------------------------------- timeouts


def test_durations_accept_every_form() -> None:
    c = parse(timeouts={"idle": "500ms", "wait": "2m", "ttl": "7d", "init": 30, "shutdown": "1.5s"})
    t = c.timeouts
    assert (t.idle, t.wait, t.ttl, t.init, t.shutdown) == (0.5, 120, 604800, 30, 1.5)


def test_invalid_duration_names_key_and_accepted_forms() -> None:
    assert only_problem(timeouts={"wait": "soon"}) == (
        "timeouts.wait: invalid duration 'soon' (use 500ms, 5s, 10m, 24h or seconds)"
    )


@pytest.mark.parametrize("off", [0, "0", "0s", "off", "OFF", "false", False, None, "none", "disabled"])
def test_execution_timeout_can_be_disabled(off: object) -> None:
    assert parse(timeouts={"execution": off}).timeouts.execution is None


@pytest.mark.parametrize(("value", "seconds"), [("5s", 5), ("7d", 604800), ("1h", 3600)])
def test_execution_timeout_spans_5s_to_7d(value: str, seconds: float) -> None:
    assert parse(timeouts={"execution": value}).timeouts.execution == seconds


@pytest.mark.parametrize("value", ["4s", "8d", True])
def test_execution_timeout_outside_its_range_is_an_error(value: object) -> None:
    assert only_problem(timeouts={"execution": value}).startswith("timeouts.execution: ")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("idle", "-1s", "invalid duration '-1s' (must not be negative; use 500ms, 5s, 10m, 24h or seconds)"),
        ("wait", 0, "must be more than 0s (got 0s)"),
        ("init", "0s", "must be more than 0s (got 0s)"),
        ("ttl", "9s", "must be at least 10s (got 9s)"),
        ("shutdown", "400d", "must be at most 365d"),
    ],
)
def test_duration_bounds_are_enforced(key: str, value: object, reason: str) -> None:
    assert only_problem(timeouts={key: value}) == f"timeouts.{key}: {reason}"


def test_zero_idle_and_zero_shutdown_are_allowed() -> None:
    t = parse(timeouts={"idle": 0, "shutdown": 0}).timeouts
    assert (t.idle, t.shutdown) == (0, 0)


# --------------------------------------------------------------------------------------- scaling/limits


def test_scaling_settings_are_validated() -> None:
    c = parse(scaling={"strategy": "request_count", "queue_delay": "2s", "requests_per_worker": 2})
    assert (c.scaling.strategy, c.scaling.queue_delay, c.scaling.requests_per_worker) == (
        "request_count",
        2,
        2,
    )
    assert problems(scaling={"strategy": "fast", "requests_per_worker": 0}) == [
        "scaling.strategy: must be 'queue_delay' or 'request_count'",
        "scaling.requests_per_worker: must be >= 1",
    ]


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("30MB", 30_000_000),
        ("512KiB", 524_288),
        ("1GB", 10**9),
        ("1GiB", 2**30),
        ("1.5MB", 1_500_000),
        ("100", 100),
        ("2 MiB", 2 * 2**20),
        ("10kb", 10_000),
        ("7B", 7),
    ],
)
def test_max_body_size_accepts_bytes_and_units(value: object, size: int) -> None:
    assert parse(limits={"max_body_size": value}).limits.max_body_size == size


@pytest.mark.parametrize("value", ["30 megs", "MB", "-1MB", "1e6", 0, -5, True, 1.5, None])
def test_max_body_size_rejects_other_values(value: object) -> None:
    assert only_problem(limits={"max_body_size": value}).startswith("limits.max_body_size: ")


def test_max_queue_may_be_zero_but_not_negative() -> None:
    assert parse(limits={"max_queue": 0}).limits.max_queue == 0
    assert only_problem(limits={"max_queue": -1}) == "limits.max_queue: must be >= 0"


# ------------------------------------------------------------------------------------------------- gpu


def test_gpu_categories_keep_the_order_of_preference() -> None:
    assert parse(gpu={"categories": ["80gb-pro", "80gb"]}).gpu.categories == ("80gb-pro", "80gb")


def test_unknown_gpu_category_lists_known_ids() -> None:
    problem = only_problem(gpu={"categories": ["80gb", "90gb"]})
    assert problem.startswith("gpu.categories[1]: unknown GPU category '90gb' (known: 16gb, 24gb-pro,")
    for cid in BUILTIN_CATALOG:
        assert cid in problem


def test_duplicate_gpu_category_is_an_error() -> None:
    assert only_problem(gpu={"categories": ["80gb", "80gb"]}) == "gpu.categories[1]: '80gb' is listed twice"


def test_gpu_types_narrow_the_chosen_categories_in_the_catalog_spelling() -> None:
    gpu = parse(gpu={"categories": ["48gb-pro"], "types": ["l40s", "rtx-6000-ada"]}).gpu
    assert gpu.types == ("L40S", "RTX 6000 Ada")
    assert gpu.products("48gb-pro") == ("NVIDIA-L40S", "NVIDIA-RTX-6000-Ada-Generation")


def test_gpu_types_without_categories_may_name_any_catalog_type() -> None:
    assert parse(gpu={"types": ["A100", "H100"]}).gpu.types == ("A100", "H100")


def test_gpu_type_outside_the_chosen_categories_is_an_error() -> None:
    assert only_problem(gpu={"categories": ["80gb"], "types": ["H100"]}) == (
        "gpu.types[0]: unknown GPU type 'H100' in categories 80gb (known: A100)"
    )


def test_unknown_gpu_type_is_an_error() -> None:
    assert only_problem(gpu={"types": ["TPU"]}).startswith(
        "gpu.types[0]: unknown GPU type 'TPU' in the catalog"
    )


def test_gpu_types_must_leave_every_chosen_category_a_type() -> None:
    assert only_problem(gpu={"categories": ["80gb-pro", "80gb"], "types": ["H100"]}) == (
        "gpu.types: leaves no GPU type in category '80gb'; add one of A100 or remove it"
    )


def test_duplicate_gpu_type_is_an_error() -> None:
    assert only_problem(gpu={"types": ["L4", "l4"]}) == "gpu.types[1]: 'l4' is listed twice"


def test_cuda_versions_accept_yaml_numbers() -> None:
    assert parse(gpu={"cuda_versions": [12.4, 12, "11.8"]}).gpu.cuda_versions == ("12.4", "12", "11.8")


def test_bad_and_duplicate_cuda_versions_are_errors() -> None:
    assert problems(gpu={"cuda_versions": ["12.x", "12", 12]}) == [
        "gpu.cuda_versions[0]: must be a CUDA version like 12.4 or 12 (got '12.x')",
        "gpu.cuda_versions[2]: '12' is listed twice",
    ]


def test_catalog_entry_adds_a_category() -> None:
    entry = {
        "types": ["X1"],
        "products": ["ACME-X1"],
        "memory_gb": 8,
        "flex_price_per_s": 0.0001,
        "active_price_per_s": 0.0001,
    }
    gpu = parse(gpu={"catalog": {"acme": entry}, "categories": ["acme", "80gb"], "types": ["x1", "a100"]}).gpu
    assert "acme" in gpu.effective_catalog() and "80gb" in gpu.effective_catalog()
    assert gpu.products("acme") == ("ACME-X1",)


def test_partial_catalog_entry_overrides_fields_of_a_builtin() -> None:
    gpu = parse(gpu={"catalog": {"80gb": {"flex_price_per_s": 0.5}}}).gpu
    entry = gpu.effective_catalog()["80gb"]
    assert entry.flex_price_per_s == 0.5
    assert entry.types == BUILTIN_CATALOG["80gb"].types and entry.memory_gb == 80
    assert BUILTIN_CATALOG["80gb"].flex_price_per_s == 0.00076


def test_catalog_override_can_relabel_a_builtin() -> None:
    gpu = parse(gpu={"catalog": {"80gb": {"products": ["My-A100"]}}, "types": ["A100"]}).gpu
    assert gpu.products("80gb") == ("My-A100",)


def test_catalog_entry_problems_name_the_field() -> None:
    assert problems(gpu={"catalog": {"80gb": {"types": ["Q"]}, "new": {"types": ["a"]}}}) == [
        "gpu.catalog.80gb.types: 'Q' matches none of products; list its labels in type_products",
        "gpu.catalog.new.memory_gb: required",
        "gpu.catalog.new.flex_price_per_s: required",
        "gpu.catalog.new.active_price_per_s: required",
    ]


def test_catalog_id_must_be_a_simple_id() -> None:
    entry = {
        "types": ["X"],
        "products": ["X"],
        "memory_gb": 1,
        "flex_price_per_s": 0,
        "active_price_per_s": 0,
    }
    assert only_problem(gpu={"catalog": {"Big GPU": entry}}) == (
        "gpu.catalog.\"Big GPU\": catalog ids must be lowercase letters, digits and '-', like 80gb-pro"
    )


# ------------------------------------------------------------------------------- placement and ports


def test_placement_values_are_single_words() -> None:
    c = parse(placement={"data_centers": ["eu-west-1a"], "network_volume": "models", "model": "org/llama-3"})
    assert c.placement.data_centers == ("eu-west-1a",)
    assert problems(placement={"data_centers": [""], "network_volume": "a b"}) == [
        "placement.data_centers[0]: must not be empty",
        "placement.network_volume: must not contain whitespace",
    ]


def test_expose_ports_parse_to_port_and_protocol() -> None:
    c = parse(expose_ports=["8888/http", "22/TCP"])
    assert c.expose_ports == (ExposedPort(8888, "http"), ExposedPort(22, "tcp"))
    assert str(c.expose_ports[0]) == "8888/http"


@pytest.mark.parametrize("value", ["8888", 8888, "0/http", "65536/tcp", "80/udp", "http/80"])
def test_expose_ports_reject_other_forms(value: object) -> None:
    assert only_problem(expose_ports=[value]).startswith("expose_ports[0]: must be PORT/http or PORT/tcp")


def test_expose_ports_must_be_distinct() -> None:
    assert only_problem(expose_ports=["80/http", "80/tcp"]) == "expose_ports[1]: port 80 is listed twice"


# ---------------------------------------------------------------------------------------------- worker


def test_worker_command_string_is_split_like_a_shell() -> None:
    c = parse(worker={"command": "python3 -m http.server --bind '127.0.0.1'"})
    assert c.worker.command == ("python3", "-m", "http.server", "--bind", "127.0.0.1")


def test_worker_command_list_turns_numbers_into_text() -> None:
    assert parse(worker={"command": ["python3", "w.py", 8000]}).worker.command == ("python3", "w.py", "8000")


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("", "must not be empty (the argv that starts one worker)"),
        ([], "must not be empty (the argv that starts one worker)"),
        ("python 'x", "cannot split the command: No closing quotation"),
    ],
)
def test_worker_command_must_be_a_usable_argv(command: object, reason: str) -> None:
    assert only_problem(worker={"command": command}) == f"worker.command: {reason}"


def test_health_port_defaults_to_the_port_without_counting_as_set() -> None:
    c = parse(worker={"port": 8000})
    assert c.worker.health_port == 8000
    assert not c.set_in_file("worker.health_port")
    assert parse(worker={"port": 8000, "health_port": 8001}).worker.health_port == 8001


@pytest.mark.parametrize("key", ["port", "health_port"])
def test_worker_ports_are_1_to_65535(key: str) -> None:
    assert only_problem(worker={key: 0}) == f"worker.{key}: must be >= 1"
    assert only_problem(worker={key: 65536}) == f"worker.{key}: must be <= 65535"


def test_health_path_must_start_with_a_slash() -> None:
    assert parse(worker={"health_path": "/healthz"}).worker.health_path == "/healthz"
    assert only_problem(worker={"health_path": "ping"}).startswith(
        "worker.health_path: must be a path starting"
    )


def test_worker_env_values_may_be_yaml_scalars() -> None:
    c = parse(worker={"env": {"A": 1, "B": True, "C": 1.5, "D": "x", "E": False}})
    assert c.worker.env == {"A": "1", "B": "true", "C": "1.5", "D": "x", "E": "false"}


def test_worker_env_rejects_bad_names_and_values() -> None:
    assert problems(worker={"env": {"1X": "a", "OK": None, "N": "a\0b"}}) == [
        "worker.env.1X: invalid variable name '1X' (letters, digits, '_'; not first a digit)",
        "worker.env.OK: must be a string",
        "worker.env.N: must not contain a NUL character",
    ]


def test_stop_grace_is_a_duration() -> None:
    assert parse(worker={"stop_grace": "2s"}).worker.stop_grace == 2


# --------------------------------------------------------------------------------------------- backend


def test_backend_settings_are_validated() -> None:
    c = parse(backend={"type": "kubernetes", "namespace": "gpu-jobs", "kubeconfig": "/etc/kube/config"})
    assert (c.backend.type, c.backend.namespace) == ("kubernetes", "gpu-jobs")
    assert problems(backend={"type": "nomad", "namespace": "Bad_NS"})[0] == (
        "backend.type: must be 'local' or 'kubernetes'"
    )


# --------------------------------------------------------------------------------- errors and unknowns


def test_unknown_key_is_an_error_naming_it() -> None:
    assert only_problem(colour="blue").startswith("colour: unknown key (known: name, type, listen")


def test_misspelt_key_suggests_the_right_one() -> None:
    assert only_problem(workers={"maxx": 4}) == "workers.maxx: unknown key (did you mean 'max'?)"
    assert only_problem(workrs={}) == "workrs: unknown key (did you mean 'workers'?)"


def test_unknown_key_in_a_catalog_entry_is_named() -> None:
    [problem] = problems(gpu={"catalog": {"80gb": {"price": 1}}})
    assert problem.startswith("gpu.catalog.80gb.price: unknown key (known: types, products,")


def test_every_problem_is_reported_at_once() -> None:
    found = problems(name="Bad", workers={"max": 0}, timeouts={"wait": "x"}, bogus=1)
    assert [p.split(":")[0] for p in found] == ["name", "workers.max", "timeouts.wait", "bogus"]


def test_a_section_given_as_a_scalar_is_an_error() -> None:
    assert only_problem(workers=3) == "workers: must be a mapping of settings"
    assert only_problem(gpu={"categories": "80gb"}) == "gpu.categories: must be a list"


def test_non_string_keys_are_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"name": "demo", 1: 2}, environ={})
    assert caught.value.problems == ["1: keys must be strings"]


def test_a_non_mapping_is_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(["name"], environ={})  # type: ignore[arg-type]
    assert caught.value.problems[0].startswith("config: must be a mapping of settings")


def test_config_error_str_is_one_problem_per_line() -> None:
    error = ConfigError(["a: x", "b: y"])
    assert str(error) == "a: x\nb: y"


# ---------------------------------------------------------------------------------------- set_in_file


def test_set_in_file_reports_what_the_file_wrote_even_at_default_values() -> None:
    c = parse(gpu={"categories": []}, flashboot=True)
    assert c.set_in_file("gpu") and c.set_in_file("gpu.categories") and c.set_in_file("flashboot")
    assert not c.set_in_file("gpu.types") and not c.set_in_file("placement.model")
    assert not c.set_in_file("worker.image") and c.set_in_file("name")


def test_set_in_file_follows_dict_keys() -> None:
    c = parse(worker={"env": {"A": "1"}})
    assert c.set_in_file("worker.env.A") and not c.set_in_file("worker.env.B")


def test_set_in_file_rejects_a_path_that_names_no_setting() -> None:
    with pytest.raises(KeyError):
        parse().set_in_file("gpu.colour")


# ------------------------------------------------------------------------------------------ load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "endpoint.yaml"
    path.write_text(text)
    return path


def load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return caught.value.problems


def test_load_config_reads_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\nworkers: {max: 5}\ntimeouts:\n  execution: off\n")
    c = load_config(path, environ={"LBPROXY_API_KEYS": "k"})
    assert (c.workers.max, c.timeouts.execution, c.auth.keys()) == (5, None, (b"k",))


def test_missing_file_is_one_clear_problem(tmp_path: Path) -> None:
    assert load_problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_directory_is_one_clear_problem(tmp_path: Path) -> None:
    assert load_problems(tmp_path) == [f"{tmp_path}: is a directory, not a config file"]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    [problem] = load_problems(write(tmp_path, "name: demo\nworkers:\n  max: 3\n bad: [\n"))
    assert problem.startswith(f"{tmp_path / 'endpoint.yaml'}: not valid YAML (line 4")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    [problem] = load_problems(write(tmp_path, "name: demo\nname: other\n"))
    assert "line 2" in problem and "duplicate key 'name'" in problem


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("just text\n", "the top level must be a mapping"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, reason: str) -> None:
    [problem] = load_problems(write(tmp_path, text))
    assert reason in problem


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    assert load_problems(path) == [f"{path}: not UTF-8 text"]


def test_validation_problems_come_through_load_config(tmp_path: Path) -> None:
    assert load_problems(write(tmp_path, "name: demo\nworkers: {active: 2, max: 1}\n")) == [
        "workers.max: must be >= workers.active (2)"
    ]


# ----------------------------------------------------------------------------------- never a traceback

_PATH = re.compile(
    r'(?:[A-Za-z0-9_][A-Za-z0-9_-]*|"(?:[^"\\]|\\.)*")(?:\.(?:[A-Za-z0-9_][A-Za-z0-9_-]*|'
    r'"(?:[^"\\]|\\.)*")|\[\d+\])*: '
)
_SECTIONS = {
    "auth": ["api_keys", "forward_authorization"],
    "workers": ["active", "max", "gpus", "concurrency"],
    "timeouts": ["idle", "execution", "wait", "ttl", "init", "shutdown"],
    "scaling": ["strategy", "queue_delay", "requests_per_worker"],
    "limits": ["max_body_size", "max_queue"],
    "gpu": ["categories", "types", "cuda_versions", "catalog"],
    "placement": ["data_centers", "network_volume", "model"],
    "worker": ["command", "image", "port", "health_port", "health_path", "env", "stop_grace"],
    "backend": ["type", "namespace", "kubeconfig"],
}
_TOP = ["name", "type", "listen", "admin", "flashboot", "expose_ports", *_SECTIONS]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        ["5s", "off", "80gb", "H100", "12.4", "8080/http", ":0", "30MB", "demo", "queue", "kubernetes"]
    )
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(_TOP) | st.text(max_size=8), max_size=6)):
        if key in _SECTIONS and draw(st.booleans()):
            keys = st.sampled_from(_SECTIONS[key]) | st.text(max_size=8)
            data[key] = draw(st.dictionaries(keys, _json, max_size=4))
        else:
            data[key] = draw(_json)
    return data


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_configs())
def test_any_json_like_input_gives_a_config_or_config_errors_naming_keys(data: dict[str, Any]) -> None:
    try:
        parse_config(data, environ={})
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert _PATH.match(problem), problem


def test_runpod_s_init_timeout_in_the_worker_env_sets_timeouts_init() -> None:
    """The product page: "setting RUNPOD_INIT_TIMEOUT=800 allows up to 800 seconds" for a worker to start."""
    worker: dict[str, Any] = {"command": ["w"], "env": {"RUNPOD_INIT_TIMEOUT": 800}}
    assert parse_config({"name": "e", "worker": worker}, {}).timeouts.init == 800.0
    assert parse_config({"name": "e", "worker": worker, "timeouts": {"init": "800s"}}, {}).timeouts.init == 800.0
    with pytest.raises(ConfigError) as disagree:
        parse_config({"name": "e", "worker": worker, "timeouts": {"init": "5m"}}, {})
    assert disagree.value.problems == ["worker.env.RUNPOD_INIT_TIMEOUT: 800 s disagrees with timeouts.init (5m); "
                                       "keep one"]
    with pytest.raises(ConfigError, match=r"worker.env.RUNPOD_INIT_TIMEOUT: 'soon' is not a number of seconds"):
        parse_config({"name": "e", "worker": {"command": ["w"], "env": {"RUNPOD_INIT_TIMEOUT": "soon"}}}, {})
