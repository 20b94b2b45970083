"""Parsers for single settings: each turns one YAML value into what a lbproxy.config model stores.

A parser raises ValueError with a reason a person can act on, which lbproxy.config_errors turns into a
`key.path: reason` line. The Annotated aliases at the end are the field types the models use; the underscored
names are meant for lbproxy.config only, which re-exports Address and ExposedPort.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, SecretStr, WithJsonSchema

from lbproxy.catalog import BUILTIN_CATALOG, GpuCategory
from lbproxy.config_fields import UNIT
from lbproxy.durations import _NUMBER, _UNIT_SECONDS, format_duration, parse_duration

__all__ = ["Address", "ExposedPort"]

_MAX_DURATION = 365 * 86400.0  # far beyond any sane timeout, and keeps timedelta/asyncio arithmetic finite
_MAX_COUNT = 1_000_000  # bounds counts so that downstream arithmetic on them stays small
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CUDA_VERSION = re.compile(r"\d{1,3}(\.\d{1,3})?")

# What a value looks like *as written* (JSON schema, for the Helm chart and editors): a before-validator turns
# `5s` into 5.0, so pydantic alone would describe the stored type. The patterns are built from the same pieces
# as the parsers, in the regex dialect both ECMA-262 and Go's RE2 (Helm) read: no ignore-case flag.


def _any_case(word: str) -> str:
    """`ms` -> `[mM][sS]`."""
    return "".join(f"[{char.lower()}{char.upper()}]" if char.isalpha() else re.escape(char) for char in word)


def _one_of(words: Any) -> str:
    return "|".join(_any_case(word) for word in words)


def _written_as(schema: dict[str, Any]) -> Any:
    """A type whose JSON schema is `schema`: the input of a before-validator, which pydantic cannot see."""
    return Annotated[Any, WithJsonSchema(schema)]


def _before(function: Any, schema: dict[str, Any]) -> BeforeValidator:
    return BeforeValidator(function, json_schema_input_type=_written_as(schema))


def _duration_pattern(*words: str) -> str:
    """The strings parse_duration reads (`500ms`, `1h30m`, `30`), and `words` such as `off`."""
    forms = [_one_of(words), _NUMBER, rf"(?:{_NUMBER}(?:{_one_of(_UNIT_SECONDS)}))+"]
    return rf"^\s*(?:{'|'.join(form for form in forms if form)})\s*$"


_WORD = r"^\S+$"
_DURATION_PATTERN = _duration_pattern()


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    WithJsonSchema({
        "type": ["string", "integer"],
        "pattern": r"^\s*(?:\[[^\]\s]+\]|[A-Za-z0-9._-]*):\d{1,5}\s*$",
        "minimum": 0,
        "maximum": 65535,
        "examples": ["0.0.0.0:8080", "[::1]:8080", ":8080"],
    }),
]


class ExposedPort(NamedTuple):
    """An extra worker port reachable directly (`expose_ports`)."""

    port: int
    protocol: Literal["http", "tcp"]

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


_PROTOCOLS = ("http", "tcp")
_EXPOSED_PORT = re.compile(rf"(\d{{1,5}})/({'|'.join(_PROTOCOLS)})")


def _exposed_port(value: object) -> ExposedPort:
    if isinstance(value, ExposedPort):
        return value
    match = _EXPOSED_PORT.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if not match or not 1 <= int(match[1]) <= 65535:
        raise ValueError(f"must be PORT/http or PORT/tcp with PORT from 1 to 65535 (got {_shown(value)})")
    return ExposedPort(int(match[1]), "http" if match[2] == "http" else "tcp")


_ExposedPortField = Annotated[
    ExposedPort,
    BeforeValidator(_exposed_port),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({
        "type": "string",
        "pattern": rf"^\s*\d{{1,5}}/(?:{_one_of(_PROTOCOLS)})\s*$",
        "examples": ["8888/http", "5432/tcp"],
    }),
]

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
_SIZE_NUMBER = r"(?:\d{1,15}(?:\.\d{0,6})?|\.\d{1,6})"
_SIZE = re.compile(rf"({_SIZE_NUMBER})\s*([a-z]*)")


def _byte_size(value: object) -> int:
    """Bytes from an int or `512KiB`, `30MB`, `1GiB` (MB = 10**6 bytes, MiB = 2**20)."""
    usage = "use a number of bytes or 512KiB, 30MB, 1GiB"
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip().lower())):
        if match[2] not in _SIZE_UNITS:
            raise ValueError(f"invalid size {_shown(value)} ({usage})")
        size = round(float(match[1]) * _SIZE_UNITS[match[2]])
    else:
        raise ValueError(f"invalid size {_shown(value)} ({usage})")
    if size < 1:
        raise ValueError("must be at least 1 byte")
    return size


def _format_size(size: int) -> str:
    """`30MB`, `512KiB`, `1GiB`: the largest unit that divides `size` exactly, as a config would say it."""
    units = sorted(((factor, name) for name, factor in _SIZE_UNITS.items() if factor > 1), reverse=True)
    for factor, name in units:
        if size % factor == 0:
            return f"{size // factor}{name[0].upper()}{name[1:-1]}B"
    return str(size)


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

    bound = {"exclusiveMinimum": minimum} if above else {"minimum": minimum}
    written = {"type": ["string", "number"], "pattern": _DURATION_PATTERN, **bound, "maximum": _MAX_DURATION}
    return _before(check, {**written, UNIT: "duration"})


_OFF = ("off", "false", "none", "disabled")
_EXECUTION_RANGE = (5.0, 7 * 86400.0)


def _execution(value: object) -> float | None:
    """The execution limit: 5s to 7d, or disabled with `0`, `off`, `false` or null (stored as None)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in _OFF:
        return None
    seconds = parse_duration(value)
    if seconds == 0:
        return None
    if not _EXECUTION_RANGE[0] <= seconds <= _EXECUTION_RANGE[1]:
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


def _catalog_id(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError("catalog ids must be lowercase letters, digits and '-', like 80gb-pro")
    return value


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


def _catalog_written() -> dict[str, Any]:
    """`gpu.catalog` as written: a new id needs a whole entry; a built-in id may give only the fields it changes
    (merged over the built-in entry, see catalog.override_entry)."""
    entry = GpuCategory.model_json_schema()
    partial = {key: value for key, value in entry.items() if key != "required"}
    return {
        "type": "object",
        "propertyNames": {"pattern": f"^{_DNS_LABEL.pattern}$"},
        "patternProperties": {f"^(?:{'|'.join(BUILTIN_CATALOG)})$": partial},
        "additionalProperties": entry,
    }


def _known_categories(schema: dict[str, Any]) -> None:
    """`gpu` JSON schema: without a catalog of its own, `categories` are built-in ids."""
    schema["if"] = {"not": {"required": ["catalog"]}}
    schema["then"] = {"properties": {"categories": {"items": {"enum": list(BUILTIN_CATALOG)}}}}


_Text = Annotated[str, AfterValidator(_text), WithJsonSchema({"type": "string", "pattern": _WORD})]
_DnsLabel = Annotated[
    str, AfterValidator(_dns_label), WithJsonSchema({"type": "string", "pattern": f"^{_DNS_LABEL.pattern}$"})
]
_Count = Annotated[int, Field(ge=0, le=_MAX_COUNT)]
_Port = Annotated[int, Field(ge=1, le=65535)]
_Duration = Annotated[float, _duration()]
_PositiveDuration = Annotated[float, _duration(above=True)]
_ApiKey = Annotated[SecretStr, _before(_api_key, {"type": "string", "pattern": _WORD, "writeOnly": True})]
_SIZE_UNIT_PATTERN = _one_of(sorted(filter(None, _SIZE_UNITS), key=len, reverse=True))  # longest first: `kib`
_ByteSize = Annotated[
    int,
    _before(_byte_size, {
        "type": ["string", "integer"],
        "pattern": rf"^\s*{_SIZE_NUMBER}\s*(?:{_SIZE_UNIT_PATTERN})?\s*$",
        "minimum": 1,
        UNIT: "bytes",
    }),
]
_ExecutionLimit = Annotated[
    float | None,
    _before(_execution, {
        "anyOf": [
            {"enum": [0, False, None]},
            {"type": "number", "minimum": _EXECUTION_RANGE[0], "maximum": _EXECUTION_RANGE[1]},
            {"type": "string", "pattern": _duration_pattern(*_OFF)},
        ],
        UNIT: "duration",
    }),
]
_CudaVersion = Annotated[
    str, _before(_number_to_text, {"type": ["string", "number"], "pattern": f"^{_CUDA_VERSION.pattern}$"})
]
_ARGV = {"type": "array", "minItems": 1, "items": {"type": ["string", "number"]}}
_ArgvField = Annotated[tuple[str, ...], _before(_command, {"anyOf": [{"type": "string", "pattern": r"\S"}, _ARGV]})]
_CommandField = Annotated[
    tuple[str, ...] | None,
    _before(_command, {"anyOf": [{"type": "string", "pattern": r"\S"}, _ARGV, {"type": "null"}]}),
]
_HealthPath = Annotated[str, AfterValidator(_health_path), WithJsonSchema({"type": "string", "pattern": r"^/\S*$"})]
_EnvField = Annotated[
    dict[Annotated[str, AfterValidator(_env_name)], Annotated[str, AfterValidator(_env_value)]],
    _before(_env, {
        "type": "object",
        "propertyNames": {"pattern": f"^{_ENV_NAME.pattern}$"},
        "additionalProperties": {"type": ["string", "number", "boolean"], "pattern": r"^[^\x00]*$"},
    }),
]
