"""The endpoint's settings (README "Settings"): one frozen pydantic model, built once from YAML and passed down.

Every model forbids unknown keys, so a typo is an error instead of a silently ignored setting. Durations are
stored as float seconds and sizes as bytes. Errors come back as ConfigError with one `key.path: reason` line
per problem, all at once, and never as a traceback whatever the input. Single values are parsed in
lbproxy.config_values and problems worded in lbproxy.config_errors; import their public names from here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from lbproxy.catalog import BUILTIN_CATALOG, GpuCategory, check_selection, override_entry, products_for
from lbproxy.config_errors import ConfigError, Loc, _field_errors, _names_a_setting, _problems
from lbproxy.config_fields import backend_only, kubernetes_only
from lbproxy.config_values import (
    _CUDA_VERSION,
    _MAX_COUNT,
    Address,
    ExposedPort,
    _AddressField,
    _api_key,
    _ApiKey,
    _ArgvField,
    _ByteSize,
    _catalog_id,
    _catalog_written,
    _CommandField,
    _Count,
    _CudaVersion,
    _DnsLabel,
    _Duration,
    _duration,
    _EnvField,
    _ExecutionLimit,
    _ExposedPortField,
    _HealthPath,
    _known_categories,
    _Port,
    _PositiveDuration,
    _shown,
    _Text,
    _written_as,
)
from lbproxy.durations import format_duration

__all__ = [
    "Address",
    "AuthSettings",
    "BackendSettings",
    "Config",
    "ConfigError",
    "CostSettings",
    "ExposedPort",
    "GpuSettings",
    "LimitsSettings",
    "LogSettings",
    "PlacementSettings",
    "QueueSettings",
    "ScalingSettings",
    "TimeoutsSettings",
    "WorkerSettings",
    "WorkersSettings",
    "load_config",
    "parse_config",
]

API_KEYS_ENV = "LBPROXY_API_KEYS"
QUEUE_STORE_ENV = "LBPROXY_QUEUE_STORE"
_M = TypeVar("_M", bound=BaseModel)


# -------------------------------------------------------------------------------------------- models


class _Settings(BaseModel):
    # Attribute docstrings are the settings' descriptions: README table, chart schema and values (config_docs).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class AuthSettings(_Settings):
    """Who may call the endpoint. Keys are SecretStr so that no repr, dump or log line shows them."""

    api_keys: tuple[_ApiKey, ...] = ()
    """Accepted `Authorization: Bearer` keys; `LBPROXY_API_KEYS` (comma separated) adds more at start. Empty:
    anyone who reaches the endpoint may call it (`check` warns on a public address)."""
    forward_authorization: bool = False
    """Pass the client's `Authorization` header on to workers; with API keys configured it is removed by
    default."""

    def keys(self) -> tuple[bytes, ...]:
        """The keys as UTF-8 bytes, for constant-time comparison in the proxy."""
        # surrogateescape: a key from the environment may hold bytes that are not UTF-8, as os.environ does.
        return tuple(key.get_secret_value().encode("utf-8", "surrogateescape") for key in self.api_keys)


class WorkersSettings(_Settings):
    active: _Count = 0
    """Workers kept running at all times, so they never cold-start; 0 scales to zero."""
    max: Annotated[int, Field(ge=1, le=_MAX_COUNT)] = 3
    """Most workers at once, starting, draining and unhealthy ones included; at least `workers.active`."""
    gpus: _Count = 1
    """GPUs per worker. Kubernetes: the container's `nvidia.com/gpu` limit. Local: each worker gets its own
    `CUDA_VISIBLE_DEVICES` slice of the visible GPUs; ignored, with a notice, when none is visible."""
    concurrency: _Count = 0
    """Requests one worker takes at once; more wait in the queue. 0: no limit."""

    @model_validator(mode="after")
    def _max_covers_active(self) -> WorkersSettings:
        if self.max < self.active:
            raise _field_errors([(("max",), f"must be >= workers.active ({self.active})")])
        return self


class TimeoutsSettings(_Settings):
    idle: _Duration = 5.0
    """A ready worker idle this long is drained and stopped (never below `workers.active`)."""
    execution: _ExecutionLimit = 600.0
    """Most time one request (or WebSocket session) may take, 5s to 7d; then 504 (a WebSocket is closed with
    code 1011). `0` or `off` disables it. Queue endpoints: per job from its start (a job's
    `policy.executionTimeout` overrides it); then TIMED_OUT."""
    wait: _PositiveDuration = 120.0
    """Most time a request waits in the queue for a free worker; then 503 `no_worker` with `Retry-After`."""
    ttl: Annotated[float, _duration(10.0)] = 86400.0
    """Queue endpoints only: most time a job may live from submission, in any state (at least 10s); then it is
    deleted (`/status` 404). A job's `policy.ttl` overrides it."""
    init: _PositiveDuration = 420.0
    """A worker not ready this long after it started is stopped and replaced: allow its whole model load.
    Runpod's way, `RUNPOD_INIT_TIMEOUT` (seconds) in `worker.env`, sets it too."""
    shutdown: _Duration = 30.0
    """On SIGTERM, how long in-flight requests may finish before the proxy exits (the chart adds it to the
    pod's termination grace)."""


class ScalingSettings(_Settings):
    strategy: Literal["queue_delay", "request_count"] = "queue_delay"
    """`queue_delay`: add workers when requests wait too long; `request_count`: size the pool to the load."""
    queue_delay: _Duration = 4.0
    """`queue_delay` strategy: add workers when the oldest queued request has waited longer than this."""
    requests_per_worker: Annotated[int, Field(ge=1, le=_MAX_COUNT)] = 4
    """`request_count` strategy: workers = ceil((queued + in progress) / this). Also `queue_delay` with
    `workers.concurrency: 0` (a worker takes every request at once, so none waits in lbproxy's queue)."""


class LimitsSettings(_Settings):
    max_body_size: _ByteSize = 30_000_000
    """Largest request body (bytes, or `512KiB`, `30MB`, `1GiB`); larger gets 413 `body_too_large`."""
    max_queue: Annotated[int, Field(ge=0, le=100 * _MAX_COUNT)] = 1000
    """Requests that may wait for a worker; more get 429 `queue_full`."""


class LogSettings(_Settings):
    """lbproxy's own log (on stderr)."""

    access: bool = False
    """One line per request on the `lbproxy.access` logger: method, path (no query), status, worker, queue wait,
    duration, bytes sent, request id. Off by default, and then it costs nothing."""
    format: Literal["text", "json"] = "text"
    """`json`: every log line is one JSON object (time, level, logger, message and the access fields)."""


class GpuSettings(_Settings):
    model_config = ConfigDict(json_schema_extra=_known_categories)

    categories: Annotated[
        tuple[_Text, ...], kubernetes_only("only the kubernetes backend places workers on GPU types")
    ] = ()
    """GPU category ids (README "GPU catalog") in order of preference, first choice first; later ones are
    fallbacks (`backend.fallback_after`). Empty: any GPU node."""
    types: Annotated[tuple[_Text, ...], kubernetes_only("only the kubernetes backend places workers on GPU types")] = ()
    """Only these GPU types within the categories, e.g. `H100` (empty: all of them)."""
    cuda_versions: Annotated[
        tuple[_CudaVersion, ...], kubernetes_only("only the kubernetes backend picks nodes by CUDA version")
    ] = ()
    """Only nodes whose driver supports one of these CUDA versions, e.g. `12.4` (empty: any)."""
    catalog: Annotated[
        dict[Annotated[str, AfterValidator(_catalog_id)], GpuCategory],
        kubernetes_only("the GPU catalog only drives placement on the kubernetes backend"),
    ] = {}
    """GPU catalog entries to add, or to override by id (`types`, `products`: node label values,
    `memory_gb`, prices); an entry for a built-in id changes only the fields it names."""

    @field_validator("cuda_versions")
    @classmethod
    def _cuda_versions(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[tuple[Loc, str]] = []
        for index, version in enumerate(values):
            if not _CUDA_VERSION.fullmatch(version):
                problems.append(((index,), f"must be a CUDA version like 12.4 or 12 (got {_shown(version)})"))
            elif version in values[:index]:
                problems.append(((index,), f"{version!r} is listed twice"))
        if problems:
            raise _field_errors(problems)
        return values

    @field_validator("catalog", mode="before", json_schema_input_type=_written_as(_catalog_written()))
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


class CostSettings(_Settings):
    """What workers cost (README "Cost"): the prices that bill them and a spend limit that caps scaling."""

    category: _Text | None = None
    """GPU catalog id whose prices bill each worker (e.g. `24gb`), where no pool says it: the local backend,
    and kubernetes without `gpu.categories`. Unset there: seconds are counted, dollars are not."""
    price_per_second: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Dollars per second of one worker, instead of the catalog's flex price (times `workers.gpus`)."""
    active_price_per_second: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Dollars per second of one of the `workers.active` workers; default: `price_per_second`."""
    max_per_hour: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Spend limit in dollars per hour: no worker is started that would bring the rate of all running workers
    above it; requests queue instead (Runpod's default account limit is 80). Unset: no limit."""

    @model_validator(mode="after")
    def _active_price_needs_a_price(self) -> CostSettings:
        if self.active_price_per_second is not None and self.price_per_second is None:
            raise _field_errors([(("active_price_per_second",), "needs cost.price_per_second as well")])
        return self


class PlacementSettings(_Settings):
    data_centers: Annotated[
        tuple[_Text, ...], kubernetes_only("only the kubernetes backend places workers in zones")
    ] = ()
    """Zones (or regions: `backend.node_labels.zone`) workers may run in (empty: any)."""
    network_volume: Annotated[
        _Text | None, kubernetes_only("only the kubernetes backend mounts a network volume into workers")
    ] = None
    """A PersistentVolumeClaim mounted into every worker at `backend.volume_mount_path`."""
    model: Annotated[
        _Text | None, kubernetes_only("only the kubernetes backend prefers nodes that cache a model")
    ] = None
    """A cached model: prefer nodes labelled as holding it (`backend.node_labels.model_prefix`)."""


class WorkerSettings(_Settings):
    command: Annotated[_CommandField, backend_only("local")] = None
    """The argv that starts one worker (a list, or a string split like a shell); required with the local
    backend."""
    image: Annotated[
        _Text | None, kubernetes_only("the local backend runs worker.command, not a container image")
    ] = None
    """The container image of one worker; required with the kubernetes backend."""
    args: Annotated[
        _ArgvField,
        kubernetes_only("the local backend runs worker.command; put the arguments there"),
        Field(examples=[["--model", "org/model"]]),  # an empty list is refused: values.yaml shows this instead
    ] = ()
    """The container's arguments (e.g. vLLM's `--model ...`; a list, or a string split like a shell); the
    image's entrypoint runs them."""
    port: _Port = 80
    """The worker's app port, given to it as `PORT`: the container port on Kubernetes; the local backend picks
    a free port per worker instead."""
    health_port: _Port | None = None
    """Where `GET health_path` is served, given as `PORT_HEALTH`; unset: `port`. Set apart from `port`, the
    local backend picks a second free port."""
    health_path: _HealthPath = "/ping"
    """The path lbproxy probes: 200 ready, 204 still loading (README "The worker contract")."""
    job_path: _HealthPath = "/run"
    """`type: queue` with `queue.delivery: http`: each job is POSTed here as `{"id", "input"}`; the JSON answer
    becomes the job's output (an `application/x-ndjson` or `text/event-stream` answer: its stream chunks)."""
    env: _EnvField = {}
    """Extra environment variables for every worker (numbers and booleans become strings)."""
    stop_grace: Annotated[_Duration, backend_only("local")] = 10.0
    """How long a stopping worker has between SIGTERM and SIGKILL."""

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
    """The label holding the GPU product, matched for `gpu.categories` and `gpu.types`."""
    cuda_driver_major: _Text = "nvidia.com/cuda.driver.major"
    """The label holding the CUDA driver's major version, matched for `gpu.cuda_versions`."""
    cuda_driver_minor: _Text = "nvidia.com/cuda.driver.minor"
    """The label holding the CUDA driver's minor version, matched for `gpu.cuda_versions`."""
    zone: _Text = "topology.kubernetes.io/zone"
    """The label `placement.data_centers` matches (`topology.kubernetes.io/region` for regions)."""
    model_prefix: _Text = "models.lbproxy.io/"
    """A node holding cached model M carries the label `<model_prefix><M as a label name>` (any value)."""
    flashboot_prefix: _Text = "flashboot.lbproxy.io/"
    """lbproxy labels nodes that ran this endpoint's workers `<flashboot_prefix><endpoint name>` (`flashboot`)."""


class BackendSettings(_Settings):
    type: Literal["local", "kubernetes"] = "local"
    """`local`: worker processes on this machine; `kubernetes`: worker pods of GPU Deployments (`pip install
    'lbproxy[kubernetes]'`)."""
    namespace: Annotated[_DnsLabel | None, kubernetes_only("only the kubernetes backend runs in a namespace")] = None
    """Where workers run; unset: the proxy pod's own namespace, else the kubeconfig's."""
    kubeconfig: Annotated[  # a path may contain spaces
        Annotated[str, Field(min_length=1)] | None, kubernetes_only("only the kubernetes backend talks to a cluster")
    ] = None
    """A kubeconfig file; unset: in-cluster credentials, else `~/.kube/config`."""
    node_labels: Annotated[NodeLabels, kubernetes_only("only the kubernetes backend matches node labels")] = (
        NodeLabels()
    )
    """Node label keys placement matches; the defaults are what NVIDIA GPU Feature Discovery and the well-known
    topology labels put on nodes."""
    fallback_after: Annotated[
        _Duration, kubernetes_only("GPU category fallback only happens on the kubernetes backend")
    ] = 60.0
    """A worker unschedulable this long sends new workers to the next `gpu.categories` entry."""
    fallback_retry: Annotated[
        _Duration, kubernetes_only("GPU category fallback only happens on the kubernetes backend")
    ] = 600.0
    """After a fallback, how long before new workers try an earlier category again."""
    volume_mount_path: Annotated[_Text, kubernetes_only("only the kubernetes backend mounts a network volume")] = (
        "/runpod-volume"
    )
    """Where `placement.network_volume` is mounted in every worker."""
    leader_election: Annotated[bool, kubernetes_only("local endpoints run one proxy, with no leader to elect")] = True
    """Proxy replicas elect one leader (a Lease) that scales; every replica routes."""
    proxy_selector: Annotated[
        _Text | None, kubernetes_only("local endpoints run one proxy, with no replicas to sum")
    ] = None
    """Label selector of all proxy replicas' pods, whose load the leader sums (the Helm chart sets it)."""
    tolerations: Annotated[tuple[dict[str, Any], ...], kubernetes_only("only kubernetes pods have tolerations")] = ()
    """Worker pod tolerations (e.g. for the `nvidia.com/gpu` taint)."""
    image_pull_secrets: Annotated[tuple[_Text, ...], kubernetes_only("the local backend pulls no images")] = ()
    """Names of the Secrets for pulling `worker.image`."""
    worker_resources: Annotated[
        dict[str, dict[str, str | int]], kubernetes_only("the local backend sets no container resources")
    ] = {}
    """Extra worker container `requests`/`limits` (cpu, memory); the GPU limit comes from `workers.gpus`."""


def _store_url(value: str | None) -> str | None:
    if value is None:
        return None
    from lbproxy.queue.locations import store_kind  # pure parsing; nothing is opened here

    store_kind(value)  # its ValueError never repeats the URL, which may hold a password
    return value


class QueueSettings(_Settings):
    """`type: queue` endpoints (README "Queue endpoints"): where jobs are kept and how workers get them."""

    store: Annotated[str | None, AfterValidator(_store_url)] = None
    """Where jobs are kept: `sqlite:///PATH.db` (WAL, durable commits; one lbproxy process), or
    `postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (`pip install 'lbproxy[postgres]'`; a queue several
    replicas share). `LBPROXY_QUEUE_STORE` replaces it at start (a password then stays out of the file; so does
    `PGPASSWORD`). Unset: `<endpoint name>.queue.db` in lbproxy's data directory (LBPROXY_DATA_DIR, else
    ~/.local/share/lbproxy)."""
    migrate: bool = True
    """PostgreSQL: `serve` creates the tables and migrates them to its version (one replica does, under a
    lock). `false`: it only checks the version and refuses to start when behind; run `lbproxy queue migrate
    CONFIG` with a user allowed to change the schema."""
    delivery: Literal["sdk", "http"] = "sdk"
    """`sdk`: workers are unchanged `runpod` SDK workers that pull jobs from `worker_listen`. `http`: lbproxy
    POSTs each job to `worker.job_path` on a ready HTTP worker (any load-balancer worker)."""
    worker_listen: _AddressField = Address("127.0.0.1", 0)
    """`sdk`: where the worker API (job-take, job-done, job-stream, job-stop, ping) listens; port 0 picks a
    free one. Apart from `listen`, so clients never reach worker routes. Kubernetes: all interfaces on a fixed
    port (the Helm chart: `0.0.0.0:8081`), so that worker pods reach it."""
    worker_url: Annotated[
        _Text | None, kubernetes_only("local workers reach the worker API on queue.worker_listen itself")
    ] = None
    """`sdk` on Kubernetes: the URL worker pods reach the worker API at, e.g. `http://NAME-proxy-worker-api:8081`
    (a Service in front of every proxy replica's `worker_listen`; the Helm chart sets both)."""
    worker_key_secret: Annotated[
        _Text | None, kubernetes_only("local workers each get a secret of their own in their environment")
    ] = None
    """`sdk` on Kubernetes: the Secret whose key `worker-key` worker pods get as RUNPOD_AI_API_KEY (never a plain
    value in the Deployment); the proxy reads the same key from LBPROXY_WORKER_KEY. A worker is accepted only
    with it and from the IP of the pod it names, so it reaches its own jobs only. The Helm chart creates both."""
    retention: _PositiveDuration = 1800.0
    """How long a finished job's result is kept for `/status` (Runpod: 30 min); then it is deleted."""
    sync_retention: _PositiveDuration = 60.0
    """The same for jobs submitted with `/runsync` (Runpod: 1 min)."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    """Times a job is handed to a worker before a lost worker (exited, lease expired) makes it FAILED with
    `worker lost`. Handler errors are never retried (as Runpod)."""
    lease: Annotated[float, _duration(2.0)] = 30.0
    """A taken job belongs to its worker this long; each ping listing it renews it. A lapsed lease requeues
    the job. Must exceed two `ping_interval`s."""
    ping_interval: Annotated[float, _duration(1.0)] = 2.0
    """`sdk`: RUNPOD_PING_INTERVAL given to workers (rounded to whole seconds, as the SDK counts them)."""
    take_hold: Annotated[float, _duration(1.0)] = 20.0
    """`sdk`: how long an empty job-take or job-stop poll is held open (the SDK gives up after 90 s and polls
    again at once on an empty answer, so it must be held)."""
    stop_grace: Annotated[float, _duration(1.0)] = 5.0
    """After a cancel or execution timeout, how long the worker has to let go of the job (an async handler
    is stopped through job-stop, and its pings stop listing it); a worker still holding it then is stopped and
    replaced (a sync handler cannot be interrupted). More than two `ping_interval`s."""
    max_run_body: _ByteSize = 10_000_000
    """Largest `/run` body (Runpod: 10 MB); larger gets 413."""
    max_runsync_body: _ByteSize = 20_000_000
    """Largest `/runsync` body (Runpod: 20 MB); larger gets 413."""
    max_result_size: _ByteSize = 20_000_000
    """Largest result, progress or stream chunk a worker may post (Runpod: 20 MB). Larger: the job FAILED,
    since the SDK does not retry a 4xx and the result would be lost silently."""
    webhook_retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Further attempts after a webhook POST fails (Runpod: 2)."""
    webhook_retry_delay: _Duration = 10.0
    """Time between webhook attempts (Runpod: 10 s)."""

    @model_validator(mode="after")
    def _outlast_two_pings(self) -> QueueSettings:
        """A lost job and a released one are both told by pings that leave it out: allow for two of them."""
        pings = 2 * round(self.ping_interval)
        problems: list[tuple[Loc, str]] = []
        if self.lease < pings:
            problems.append((("lease",), f"must be at least two ping intervals ({pings}s)"))
        if self.stop_grace <= pings:
            problems.append((("stop_grace",), f"must be more than two ping intervals ({pings}s)"))
        if problems:
            raise _field_errors(problems)
        return self


class Config(_Settings):
    """One endpoint's settings (README "Settings")."""

    name: _DnsLabel
    """Endpoint name, a DNS-1123 label: names the worker Deployments and appears in every log line and
    metric."""
    type: Literal["load_balancer", "queue"] = "load_balancer"
    """`load_balancer`: requests go straight to workers. `queue`: Runpod-compatible asynchronous jobs
    (`/v2/NAME/run`, `/runsync`, `/status`, ...) that unchanged `runpod` SDK workers pull (README "Queue
    endpoints")."""
    listen: _AddressField = Address("0.0.0.0", 8080)
    """The proxy's address, `HOST:PORT` (`:8080`: every IPv4 interface)."""
    admin: _AddressField = Address("127.0.0.1", 9090)
    """The admin address: `/healthz`, `/readyz`, `/status`, `/metrics` and the dashboard (`/`). They answer
    without API keys, so keep it on loopback unless a network policy guards it."""
    auth: AuthSettings = AuthSettings()
    """Who may call the endpoint."""
    workers: WorkersSettings = WorkersSettings()
    """How many workers run, and how big each is."""
    timeouts: TimeoutsSettings = TimeoutsSettings()
    """How long things may take."""
    scaling: ScalingSettings = ScalingSettings()
    """When the controller adds workers."""
    limits: LimitsSettings = LimitsSettings()
    """What clients may send."""
    log: LogSettings = LogSettings()
    """What lbproxy logs, and how."""
    gpu: GpuSettings = GpuSettings()
    """Which GPUs workers run on."""
    placement: PlacementSettings = PlacementSettings()
    """Where workers run."""
    flashboot: Annotated[bool, backend_only("kubernetes")] = True
    """Prefer nodes that ran this endpoint's workers recently (image and model already there); lbproxy labels
    those nodes. No effect on the local backend (a notice)."""
    expose_ports: Annotated[
        tuple[_ExposedPortField, ...], kubernetes_only("only the kubernetes backend exposes worker ports directly")
    ] = ()
    """Extra worker ports reachable directly (a Service `<name>-workers`), `PORT/http` or `PORT/tcp`."""
    worker: WorkerSettings = WorkerSettings()
    """How one worker starts, and where lbproxy reaches it."""
    backend: BackendSettings = BackendSettings()
    """What runs the workers."""
    queue: QueueSettings = QueueSettings()
    """`type: queue` endpoints: where jobs are kept, how workers get them, how long results stay."""
    cost: CostSettings = CostSettings()
    """What workers cost (README "Cost"), and a spend limit."""

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

    @model_validator(mode="after")
    def _runpod_init_timeout(self) -> Config:
        """Runpod extends the cold-start limit with RUNPOD_INIT_TIMEOUT (seconds) in the worker's environment:
        a migrated endpoint keeps it there, and here it is timeouts.init."""
        raw = self.worker.env.get("RUNPOD_INIT_TIMEOUT")
        if raw is None:
            return self
        where = ("worker", "env", "RUNPOD_INIT_TIMEOUT")
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < math.inf:
            raise _field_errors([(where, f"{raw!r} is not a number of seconds > 0 (Runpod's worker init timeout)")])
        if "init" in self.timeouts.model_fields_set:
            if self.timeouts.init != seconds:
                raise _field_errors([(where, f"{raw} s disagrees with timeouts.init "
                                             f"({format_duration(self.timeouts.init)}); keep one")])
            return self
        timeouts = self.timeouts.model_copy(update={"init": seconds})
        object.__setattr__(self, "timeouts", timeouts)  # frozen: set once, while the model is being validated
        return self

    @model_validator(mode="after")
    def _cost_category_in_catalog(self) -> Config:
        category = self.cost.category
        catalog = self.gpu.effective_catalog()
        if category is not None and category not in catalog:
            reason = f"unknown GPU category {category!r} (known: {', '.join(catalog)})"
            raise _field_errors([(("cost", "category"), reason)])
        return self

    def set_in_file(self, dotted: str) -> bool:
        """Whether the file set `dotted` (e.g. `gpu.categories`), even to its default value.

        Raises KeyError for a path that names no setting, so a misspelt check fails loudly.
        """
        parts = dotted.split(".")
        if not _names_a_setting(parts, Config):
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
    environ = os.environ if environ is None else environ
    env_keys, problems = _env_api_keys(environ)
    env_store = environ.get(QUEUE_STORE_ENV, "").strip() or None
    if env_store is not None:
        try:
            _store_url(env_store)
        except ValueError as exc:
            problems.append(f"{QUEUE_STORE_ENV}: {exc}")
    if not isinstance(data, Mapping):
        raise ConfigError([f"config: must be a mapping of settings (key: value), not {type(data).__name__}"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, Config) + problems) from None
    except RecursionError:
        raise ConfigError(["config: nested too deeply"]) from None
    if problems:
        raise ConfigError(problems)
    if env_store is not None:
        config = _replace(config, queue=_replace(config.queue, store=env_store))
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
