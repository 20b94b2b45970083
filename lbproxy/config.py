"""The endpoint's settings (DESIGN 2): one frozen pydantic model, built once from YAML and passed down.

Every model forbids unknown keys, so a typo is an error instead of a silently ignored setting. Durations are
stored as float seconds and sizes as bytes. Errors come back as ConfigError with one `key.path: reason` line
per problem, all at once, and never as a traceback whatever the input.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lbproxy.catalog import BUILTIN_CATALOG, GpuCategory, check_selection, override_entry, products_for
from lbproxy.durations import format_duration, parse_duration

__all__ = [
    "Address",
    "AuthSettings",
    "BackendSettings",
    "Config",
    "ConfigError",
    "ExposedPort",
    "GpuSettings",
    "LimitsSettings",
    "PlacementSettings",
    "ScalingSettings",
    "TimeoutsSettings",
    "WorkerSettings",
    "WorkersSettings",
    "load_config",
    "parse_config",
]

API_KEYS_ENV = "LBPROXY_API_KEYS"
_MAX_DURATION = 365 * 86400.0  # far beyond any sane timeout, and keeps timedelta/asyncio arithmetic finite
_MAX_COUNT = 1_000_000  # bounds counts so that downstream arithmetic on them stays small
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)


# ---------------------------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """The config cannot be used; `problems` holds every reason, each `key.path: reason`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _field_errors(problems: list[tuple[Loc, str]]) -> PydanticCustomError:
    """Errors located at fields of a model (relative locs), raised by a check that spans several fields."""
    return PydanticCustomError("lbproxy_field", "{reason}", {"reason": problems[0][1], "problems": problems})


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------------------- value parsers


class Address(NamedTuple):
    """A `HOST:PORT` to listen on; port 0 asks the OS for a free one (tests)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def is_loopback(self) -> bool:
        """Whether only this machine can connect (a hostname other than localhost counts as public)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _address(value: object) -> Address:
    """`0.0.0.0:8080`, `[::1]:8080`, `:8080` (all IPv4 interfaces) or a bare port number."""
    usage = "must be HOST:PORT, e.g. 0.0.0.0:8080, [::1]:8080 or :8080"
    if isinstance(value, Address):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = "0.0.0.0", str(value) if value >= 0 else "-"
    elif isinstance(value, str):
        text = value.strip()
        bracketed = re.fullmatch(r"\[([^\]]*)\]:(\S*)", text)
        if bracketed:
            host, port_text = bracketed.groups()
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{usage}; {host!r} is not an IPv6 address") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(f"{usage} (got {_shown(value)})")
            if ":" in host:
                raise ValueError(f"{usage}; put an IPv6 host in brackets, e.g. [::1]:8080")
            host = host or "0.0.0.0"
            if not re.fullmatch(r"[A-Za-z0-9._-]+", host):
                raise ValueError(f"{usage}; {_shown(host)} is not a host name or address")
    else:
        raise ValueError(usage)
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"{usage}; the port must be a number from 0 to 65535")
    return Address(host, int(port_text))


_AddressField = Annotated[
    Address,
    BeforeValidator(_address),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["0.0.0.0:8080", "[::1]:8080", ":8080"]}),
]


class ExposedPort(NamedTuple):
    """An extra worker port reachable directly (`expose_ports`)."""

    port: int
    protocol: Literal["http", "tcp"]

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


def _exposed_port(value: object) -> ExposedPort:
    if isinstance(value, ExposedPort):
        return value
    match = re.fullmatch(r"(\d{1,5})/(http|tcp)", value.strip().lower()) if isinstance(value, str) else None
    if not match or not 1 <= int(match[1]) <= 65535:
        raise ValueError(f"must be PORT/http or PORT/tcp with PORT from 1 to 65535 (got {_shown(value)})")
    return ExposedPort(int(match[1]), "http" if match[2] == "http" else "tcp")


_ExposedPortField = Annotated[
    ExposedPort,
    BeforeValidator(_exposed_port),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["8888/http", "5432/tcp"]}),
]

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def _byte_size(value: object) -> int:
    """Bytes from an int or `512KiB`, `30MB`, `1GiB` (MB = 10**6 bytes, MiB = 2**20)."""
    usage = "use a number of bytes or 512KiB, 30MB, 1GiB"
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (
        match := re.fullmatch(r"(\d{1,15}(?:\.\d{0,6})?|\.\d{1,6})\s*([a-z]*)", value.strip().lower())
    ):
        if match[2] not in _SIZE_UNITS:
            raise ValueError(f"invalid size {_shown(value)} ({usage})")
        size = round(float(match[1]) * _SIZE_UNITS[match[2]])
    else:
        raise ValueError(f"invalid size {_shown(value)} ({usage})")
    if size < 1:
        raise ValueError("must be at least 1 byte")
    return size


def _duration(minimum: float = 0.0, *, above: bool = False) -> Any:
    """A validator for durations of at least `minimum` (or strictly above it), at most a year."""

    def check(value: object) -> float:
        seconds = parse_duration(value)
        if above and seconds <= minimum:
            raise ValueError(f"must be more than {format_duration(minimum)} (got {format_duration(seconds)})")
        if seconds < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)} (got {format_duration(seconds)})")
        if seconds > _MAX_DURATION:
            raise ValueError(f"must be at most {format_duration(_MAX_DURATION)}")
        return seconds

    return BeforeValidator(check)


def _execution(value: object) -> float | None:
    """The execution limit: 5s to 7d, or disabled with `0`, `off`, `false` or null (stored as None)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in {"off", "false", "none", "disabled"}:
        return None
    seconds = parse_duration(value)
    if seconds == 0:
        return None
    if not 5 <= seconds <= 7 * 86400:
        raise ValueError(f"must be from 5s to 7d, or off (got {format_duration(seconds)})")
    return seconds


def _text(value: str) -> str:
    """A non-empty single word: names, ids, keys and zones never contain whitespace."""
    if not value:
        raise ValueError("must not be empty")
    if any(char.isspace() for char in value):
        raise ValueError("must not contain whitespace")
    return value


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a "
            f"letter or digit, at most 63 characters (got {_shown(value)})"
        )
    return value


def _scalar_to_text(value: object) -> object:
    """YAML reads `12.4`, `8000` and `true` as numbers and booleans where a string was meant."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _number_to_text(value: object) -> object:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _api_key(value: object) -> object:
    # Messages never include the value: a key must not reach a log through its own error.
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be empty")
        if any(char.isspace() for char in value):
            raise ValueError("must not contain whitespace")
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ValueError("must be valid UTF-8 text") from None
    return value


_Text = Annotated[str, AfterValidator(_text)]
_DnsLabel = Annotated[str, AfterValidator(_dns_label)]
_Count = Annotated[int, Field(ge=0, le=_MAX_COUNT)]
_Port = Annotated[int, Field(ge=1, le=65535)]
_Duration = Annotated[float, _duration()]
_PositiveDuration = Annotated[float, _duration(above=True)]
_ApiKey = Annotated[SecretStr, BeforeValidator(_api_key)]


# -------------------------------------------------------------------------------------------- models


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthSettings(_Settings):
    """Who may call the endpoint. Keys are SecretStr so that no repr, dump or log line shows them."""

    api_keys: tuple[_ApiKey, ...] = ()
    """Accepted `Authorization: Bearer` keys; LBPROXY_API_KEYS adds more at load time. Empty: open."""
    forward_authorization: bool = False
    """Pass the client's Authorization header on to the worker (stripped by default)."""

    def keys(self) -> tuple[bytes, ...]:
        """The keys as UTF-8 bytes, for constant-time comparison in the proxy."""
        # surrogateescape: a key from the environment may hold bytes that are not UTF-8, as os.environ does.
        return tuple(key.get_secret_value().encode("utf-8", "surrogateescape") for key in self.api_keys)


class WorkersSettings(_Settings):
    active: _Count = 0
    """Workers kept running at all times (no cold start for them)."""
    max: Annotated[int, Field(ge=1, le=_MAX_COUNT)] = 3
    gpus: _Count = 1
    """GPUs per worker."""
    concurrency: _Count = 0
    """Requests one worker takes at once; 0 = no limit."""

    @model_validator(mode="after")
    def _max_covers_active(self) -> WorkersSettings:
        if self.max < self.active:
            raise _field_errors([(("max",), f"must be >= workers.active ({self.active})")])
        return self


class TimeoutsSettings(_Settings):
    idle: _Duration = 5.0
    execution: Annotated[float | None, BeforeValidator(_execution)] = 600.0
    """None: disabled (`off`)."""
    wait: _PositiveDuration = 120.0
    ttl: Annotated[float, _duration(10.0)] = 86400.0
    init: _PositiveDuration = 420.0
    shutdown: _Duration = 30.0
    """How long SIGTERM waits for in-flight requests before the proxy exits."""


class ScalingSettings(_Settings):
    strategy: Literal["queue_delay", "request_count"] = "queue_delay"
    queue_delay: _Duration = 4.0
    requests_per_worker: Annotated[int, Field(ge=1, le=_MAX_COUNT)] = 4


class LimitsSettings(_Settings):
    max_body_size: Annotated[int, BeforeValidator(_byte_size)] = 30_000_000
    """Largest request body in bytes; larger gets 413."""
    max_queue: Annotated[int, Field(ge=0, le=100 * _MAX_COUNT)] = 1000
    """Requests waiting for a worker; beyond it 429."""


def _catalog_id(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError("catalog ids must be lowercase letters, digits and '-', like 80gb-pro")
    return value


class GpuSettings(_Settings):
    categories: tuple[_Text, ...] = ()
    """Category ids in order of preference, first choice first."""
    types: tuple[_Text, ...] = ()
    """GPU types kept within the categories (empty: all); stored in the catalog's spelling."""
    cuda_versions: tuple[Annotated[str, BeforeValidator(_number_to_text)], ...] = ()
    catalog: dict[Annotated[str, AfterValidator(_catalog_id)], GpuCategory] = {}
    """Entries added to or overriding the built-in catalog; a partial entry overrides fields of a built-in."""

    @field_validator("cuda_versions")
    @classmethod
    def _cuda_versions(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[tuple[Loc, str]] = []
        for index, version in enumerate(values):
            if not re.fullmatch(r"\d{1,3}(\.\d{1,3})?", version):
                problems.append(((index,), f"must be a CUDA version like 12.4 or 12 (got {_shown(version)})"))
            elif version in values[:index]:
                problems.append(((index,), f"{version!r} is listed twice"))
        if problems:
            raise _field_errors(problems)
        return values

    @field_validator("catalog", mode="before")
    @classmethod
    def _merge_over_builtin(cls, value: object) -> object:
        """A partial entry for a built-in id overrides only the fields it names (e.g. prices)."""
        if not isinstance(value, Mapping):
            return value
        return {key: override_entry(key, entry) for key, entry in value.items()}

    @model_validator(mode="after")
    def _known_categories_and_types(self) -> GpuSettings:
        problems, types = check_selection(self.effective_catalog(), self.categories, self.types)
        if problems:
            raise _field_errors(problems)
        object.__setattr__(self, "types", types)  # the catalog's spelling; frozen, so only during validation
        return self

    def effective_catalog(self) -> Mapping[str, GpuCategory]:
        """The built-in catalog with this config's additions and overrides."""
        return {**BUILTIN_CATALOG, **self.catalog}

    def products(self, category_id: str) -> tuple[str, ...]:
        """`nvidia.com/gpu.product` values for one chosen category, narrowed by `types`."""
        return products_for(self.effective_catalog()[category_id], self.types)


class PlacementSettings(_Settings):
    data_centers: tuple[_Text, ...] = ()
    network_volume: _Text | None = None
    model: _Text | None = None


def _command(value: object) -> object:
    """A string is split like a shell would (without running one); numbers in a list become text."""
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from None
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("must not be empty (the argv that starts one worker)")
        return [_number_to_text(arg) for arg in value]
    return value


def _health_path(value: str) -> str:
    if not value.startswith("/") or any(char.isspace() for char in value):
        raise ValueError(f"must be a path starting with '/', like /ping (got {_shown(value)})")
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"invalid variable name {_shown(value)} (letters, digits, '_'; not first a digit)")
    return value


def _env_value(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _env(value: object) -> object:
    if isinstance(value, Mapping):
        return {name: _scalar_to_text(text) for name, text in value.items()}
    return value


class WorkerSettings(_Settings):
    command: Annotated[tuple[str, ...] | None, BeforeValidator(_command)] = None
    """`local`: the argv that starts one worker (a string is split with shlex)."""
    image: _Text | None = None
    """`kubernetes`: the container image."""
    args: Annotated[tuple[str, ...], BeforeValidator(_command)] = ()
    """`kubernetes`: the container's arguments (e.g. vLLM's `--model ...`); the image's entrypoint runs them."""
    port: _Port = 80
    health_port: _Port | None = None
    """Where GET health_path is served; filled with `port` when not set apart."""
    health_path: Annotated[str, AfterValidator(_health_path)] = "/ping"
    env: Annotated[
        dict[Annotated[str, AfterValidator(_env_name)], Annotated[str, AfterValidator(_env_value)]],
        BeforeValidator(_env),
    ] = {}
    stop_grace: _Duration = 10.0
    """Local backend: how long a worker has between SIGTERM and SIGKILL."""

    @model_validator(mode="after")
    def _health_port_defaults_to_port(self) -> WorkerSettings:
        if self.health_port is None:
            # Filled without adding to model_fields_set: the file did not set it.
            object.__setattr__(self, "health_port", self.port)
        return self


class NodeLabels(_Settings):
    """Node label keys the kubernetes backend matches; the defaults are what NVIDIA GPU Feature Discovery
    and the well-known topology labels put on nodes."""

    gpu_product: _Text = "nvidia.com/gpu.product"
    cuda_driver_major: _Text = "nvidia.com/cuda.driver.major"
    cuda_driver_minor: _Text = "nvidia.com/cuda.driver.minor"
    zone: _Text = "topology.kubernetes.io/zone"
    model_prefix: _Text = "models.lbproxy.io/"
    """A node holding cached model M carries the label `<model_prefix><M as a label name>` (any value)."""
    flashboot_prefix: _Text = "flashboot.lbproxy.io/"
    """The controller labels nodes that ran this endpoint's workers `<flashboot_prefix><endpoint name>`."""


class BackendSettings(_Settings):
    type: Literal["local", "kubernetes"] = "local"
    namespace: _DnsLabel | None = None
    """kubernetes: where workers run; unset: the proxy pod's own namespace, else the kubeconfig's."""
    kubeconfig: Annotated[str, Field(min_length=1)] | None = None  # a path may contain spaces
    """kubernetes: a kubeconfig file; unset: in-cluster credentials, else ~/.kube/config."""
    node_labels: NodeLabels = NodeLabels()
    fallback_after: _Duration = 60.0
    """kubernetes: a worker unschedulable this long sends new workers to the next gpu.categories entry."""
    fallback_retry: _Duration = 600.0
    """kubernetes: after a fallback, how long before an earlier category is tried again."""
    volume_mount_path: _Text = "/runpod-volume"
    """kubernetes: where placement.network_volume is mounted in every worker."""
    leader_election: bool = True
    """kubernetes: replicas elect one leader (a Lease) that scales; every replica routes."""
    proxy_selector: _Text | None = None
    """kubernetes: label selector of all proxy replicas' pods; the leader sums their load (the chart sets it)."""
    tolerations: tuple[dict[str, Any], ...] = ()
    """kubernetes: pod tolerations of the workers (e.g. for the nvidia.com/gpu taint)."""
    image_pull_secrets: tuple[_Text, ...] = ()
    worker_resources: dict[str, dict[str, str | int]] = {}
    """kubernetes: extra container resources (`requests`/`limits` of cpu, memory); the GPU limit comes from
    workers.gpus."""


class Config(_Settings):
    """One endpoint's settings (DESIGN 2)."""

    name: _DnsLabel
    type: Literal["load_balancer", "queue"] = "load_balancer"
    listen: _AddressField = Address("0.0.0.0", 8080)
    admin: _AddressField = Address("127.0.0.1", 9090)
    auth: AuthSettings = AuthSettings()
    workers: WorkersSettings = WorkersSettings()
    timeouts: TimeoutsSettings = TimeoutsSettings()
    scaling: ScalingSettings = ScalingSettings()
    limits: LimitsSettings = LimitsSettings()
    gpu: GpuSettings = GpuSettings()
    placement: PlacementSettings = PlacementSettings()
    flashboot: bool = True
    expose_ports: tuple[_ExposedPortField, ...] = ()
    worker: WorkerSettings = WorkerSettings()
    backend: BackendSettings = BackendSettings()

    @field_validator("expose_ports")
    @classmethod
    def _distinct_ports(cls, ports: tuple[ExposedPort, ...]) -> tuple[ExposedPort, ...]:
        problems: list[tuple[Loc, str]] = [
            ((index,), f"port {port.port} is listed twice")
            for index, port in enumerate(ports)
            if port.port in {p.port for p in ports[:index]}
        ]
        if problems:
            raise _field_errors(problems)
        return ports

    @model_validator(mode="after")
    def _admin_apart_from_listen(self) -> Config:
        hosts = {self.listen.host, self.admin.host}
        same_host = len(hosts) == 1 or bool(hosts & {"0.0.0.0", "::"})
        if self.listen.port == self.admin.port != 0 and same_host:
            raise _field_errors([(("admin",), f"must not use the proxy's port ({self.listen})")])
        return self

    def set_in_file(self, dotted: str) -> bool:
        """Whether the file set `dotted` (e.g. `gpu.categories`), even to its default value.

        Raises KeyError for a path that names no setting, so a misspelt check fails loudly.
        """
        parts = dotted.split(".")
        if not _names_a_setting(parts):
            raise KeyError(f"{dotted}: no such setting")
        node: object = self
        for part in parts:
            if isinstance(node, BaseModel):
                if part not in node.model_fields_set:
                    return False
                node = getattr(node, part)
            elif isinstance(node, Mapping):
                if part not in node:
                    return False
                node = node[part]
        return True


# ------------------------------------------------------------------------------- error translation

_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def _segment(part: str | int) -> str:
    text = str(part)
    if _SIMPLE_KEY.fullmatch(text):
        return text
    return json.dumps(text if len(text) <= 40 else text[:37] + "...")


def _path(loc: Loc, *, last_is_key: bool = False) -> str:
    """`gpu.categories[1]`, `worker.env."A B"`: dots between keys, brackets for list indexes."""
    parts = list(loc)
    text = ""
    for index, part in enumerate(parts):
        if part == "[key]":
            continue
        next_part = parts[index + 1] if index + 1 < len(parts) else None
        is_key = next_part == "[key]" or (last_is_key and next_part is None)
        if isinstance(part, int) and not is_key:
            text += f"[{part}]"
        else:
            text += ("." if text else "") + _segment(part)
    return text or "config"


_NOT_A_SETTING = object()


def _annotation_at(loc: Loc | list[str]) -> Any:
    """The type a config path holds (`_NOT_A_SETTING` if none): settings models by field, dicts by any key."""
    current: Any = Config
    for part in loc:
        if get_origin(current) is dict:
            current = get_args(current)[1]
        elif isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            if field is None:
                return _NOT_A_SETTING
            current = field.annotation
        else:
            return _NOT_A_SETTING
    return current


def _names_a_setting(parts: list[str]) -> bool:
    return _annotation_at(parts) is not _NOT_A_SETTING


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The settings model that holds the keys at `loc`, to suggest the key a typo meant."""
    current = _annotation_at(loc)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unknown_key(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (known: {', '.join(known)})"


_REASONS = {
    "missing": "required",
    "invalid_key": "keys must be strings",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "int_parsing_size": "number too large",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping of settings",
    "model_attributes_type": "must be a mapping of settings",
}


def _reason(error: Any) -> str:
    kind, ctx, loc = error["type"], error.get("ctx") or {}, tuple(error["loc"])
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if loc and loc[-1] == "[key]" and kind == "string_type":
        return "keys must be strings"
    if kind in _REASONS:
        return _REASONS[kind]
    if kind in {"value_error", "assertion_error"} and "error" in ctx:
        return str(ctx["error"])
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
    if kind in bounds:
        symbol, key = bounds[kind]
        return f"must be {symbol} {ctx.get(key)}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        count = ctx.get("min_length")
        return "must not be empty" if count == 1 else f"must have at least {count} entries"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ").replace("Input should be", "must be", 1)
    return message[:1].lower() + message[1:]


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if error["type"] == "lbproxy_field":
            for sub_loc, reason in (error.get("ctx") or {}).get("problems", []):
                problems.append(f"{_path(loc + tuple(sub_loc))}: {reason}")
        else:
            problems.append(f"{_path(loc, last_is_key=error['type'] == 'invalid_key')}: {_reason(error)}")
    return list(dict.fromkeys(problems))


# ------------------------------------------------------------------------------------------ loading


def _env_api_keys(environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Keys from LBPROXY_API_KEYS (comma separated, blanks dropped) and the problems with them."""
    keys = [key.strip() for key in environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
    problems = []
    for key in keys:
        try:
            _api_key(key)
        except ValueError as exc:
            problems.append(f"{API_KEYS_ENV}: keys {exc}")
    return keys, list(dict.fromkeys(problems))


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate settings (a parsed YAML mapping) into a Config, adding keys from LBPROXY_API_KEYS.

    `environ` defaults to os.environ. Raises ConfigError listing every problem.
    """
    env_keys, problems = _env_api_keys(os.environ if environ is None else environ)
    if not isinstance(data, Mapping):
        raise ConfigError([f"config: must be a mapping of settings (key: value), not {type(data).__name__}"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc) + problems) from None
    except RecursionError:
        raise ConfigError(["config: nested too deeply"]) from None
    if problems:
        raise ConfigError(problems)
    file_keys = [key.get_secret_value() for key in config.auth.api_keys]
    added = [SecretStr(key) for key in dict.fromkeys(env_keys) if key not in file_keys]
    if not added:
        return config
    # model_construct keeps model_fields_set, so set_in_file still reports only what the file set.
    return _replace(config, auth=_replace(config.auth, api_keys=config.auth.api_keys + tuple(added)))


def _replace(model: _M, **changes: object) -> _M:
    """A copy with some fields changed, keeping model_fields_set (so set_in_file still means the file)."""
    values = {name: getattr(model, name) for name in type(model).model_fields}
    return type(model).model_construct(_fields_set=set(model.model_fields_set), **{**values, **changes})


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping instead of keeping the last silently."""


def _construct_mapping(loader: _StrictLoader, node: Any) -> Any:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable; construct_mapping reports it
            continue
        if duplicate:
            problem = f"found duplicate key {_shown(key)}"
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, problem, key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(name: str, path: str | os.PathLike[str]) -> object:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{name}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{name}: is a directory, not a config file"]) from None
    except PermissionError:
        raise ConfigError([f"{name}: permission denied"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read ({exc.strerror or exc})"]) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{name}: not valid YAML ({where}{problem})"]) from None
    except RecursionError:
        raise ConfigError([f"{name}: nested too deeply"]) from None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read a YAML config file and validate it (see parse_config). Raises ConfigError."""
    name = os.fspath(path)
    data = _read_yaml(name, path)
    if data is None:
        raise ConfigError([f"{name}: the file is empty; it needs at least `name: <endpoint name>`"])
    if not isinstance(data, Mapping):
        raise ConfigError([f"{name}: the top level must be a mapping of settings (key: value), not a YAML "
                           f"{type(data).__name__}"])
    return parse_config(data, environ)
