"""Which backend honours a setting, as metadata on the config model's fields, and a walk over the settings.

The config model is the one source for settings: `lbproxy check` (checks.py), the README table and the Helm
chart's schema and values (config_docs.py) all read the backend of a key from here, so a new kubernetes-only
field is refused on the local backend, documented and schema-checked by adding one annotation to it. The
metadata lives in each field's `json_schema_extra`, so the model's own JSON schema carries it too. Like
config_errors, this module knows the models only through the root model passed in: no import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

__all__ = [
    "BACKEND",
    "LOCAL_REFUSAL",
    "UNIT",
    "Setting",
    "backend_only",
    "kubernetes_only",
    "refused_locally",
    "settings",
]

Backend = Literal["local", "kubernetes"]
_BACKENDS: dict[object, Backend] = {"local": "local", "kubernetes": "kubernetes"}

BACKEND = "x-lbproxy-backend"
"""JSON schema keyword: the only backend a setting has an effect on."""
LOCAL_REFUSAL = "x-lbproxy-local-refusal"
"""JSON schema keyword: why the local backend cannot honour a setting; `serve` refuses it when the file sets it."""
UNIT = "x-lbproxy-unit"
"""JSON schema keyword: `duration` (stored as seconds) or `bytes`, so docs show defaults as people write them."""


def backend_only(backend: Backend) -> Any:
    """Field metadata: the setting has an effect on `backend` only (the docs say so; nothing refuses it)."""
    return Field(json_schema_extra={BACKEND: backend})


def kubernetes_only(why_not_local: str) -> Any:
    """Field metadata: a kubernetes-only setting, refused with the local backend when the file sets it.

    `why_not_local` completes `<key>: ...; remove it or set backend.type: kubernetes`. An error rather than
    ignoring it: a config written for Kubernetes must not run silently without its placement.
    """
    return Field(json_schema_extra={BACKEND: "kubernetes", LOCAL_REFUSAL: why_not_local})


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of the config: a field of a settings model, or a whole section (a nested model)."""

    key: str  # dotted, e.g. `timeouts.idle`
    field: FieldInfo
    section: type[BaseModel] | None  # the nested model when the key is a section
    backend: Backend | None  # its own or its section's

    @property
    def extra(self) -> Mapping[str, Any]:
        extra = self.field.json_schema_extra
        return extra if isinstance(extra, Mapping) else {}


def _section(field: FieldInfo) -> type[BaseModel] | None:
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def settings(root: type[BaseModel], prefix: str = "", backend: Backend | None = None) -> Iterator[Setting]:
    """Every key under `root` in field order, each section before its keys."""
    for name, field in root.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, Mapping) else {}
        own = _BACKENDS[extra[BACKEND]] if BACKEND in extra else backend
        section = _section(field)
        yield Setting(prefix + name, field, section, own)
        if section is not None:
            yield from settings(section, f"{prefix}{name}.", own)


def refused_locally(root: type[BaseModel]) -> dict[str, str]:
    """Kubernetes-only keys (sections included) -> why the local backend cannot honour them."""
    return {s.key: s.extra[LOCAL_REFUSAL] for s in settings(root) if LOCAL_REFUSAL in s.extra}
