"""``--set key=value`` and ``--grid key=v1,v2,...``: the settings to simulate, each validated like a config file.

A key is a config setting (``timeouts.idle``, ``workers.max``, ...) among those the simulation models
(``MODELLED``), or one of the simulation's own assumptions (``sim.cold_start``, ``sim.stop_time``). A value is
read as YAML, as in the file (``10s``, ``4``, ``[24gb, 48gb]``). Every combination of the grid is validated by
the config model before anything runs, so a bad value fails at once with the key and the reason.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ..config import Config, ConfigError, parse_config
from ..durations import parse_duration
from .coldstart import ColdStart, parse_cold_start

__all__ = ["MODELLED", "SIM_KEYS", "Setting", "SettingsError", "expand", "split_values"]

MODELLED = (
    "workers.active", "workers.max", "workers.concurrency", "workers.gpus",
    "timeouts.idle", "timeouts.wait", "timeouts.init", "timeouts.execution",
    "scaling.strategy", "scaling.queue_delay", "scaling.requests_per_worker",
    "limits.max_queue",
    "cost.category", "cost.price_per_second", "cost.active_price_per_second", "cost.max_per_hour",
    "gpu.categories",
)
SIM_KEYS = ("sim.cold_start", "sim.stop_time")


class SettingsError(ValueError):
    """Bad --set/--grid input: one line per problem, each naming the key."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Setting:
    """One combination to simulate: the validated config, the model's assumptions and the labels."""

    config: Config
    cold_start: ColdStart
    stop_time: float
    labels: Mapping[str, str]  # key -> value as written, for every key --set or --grid gave


def split_values(text: str) -> list[str]:
    """``a,b,c`` into its values; commas inside (), [] or {} belong to one value (``seq(1s,2s)``, ``[a,b]``)."""
    values, depth, current = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return values


def _pair(item: str, option: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or not value.strip():
        raise SettingsError([f"{option} {item!r}: expected key=value (e.g. timeouts.idle=10s)"])
    return key, value.strip()


def _check_key(key: str) -> str | None:
    if key in MODELLED or key in SIM_KEYS:
        return None
    return (f"{key}: not a setting the simulation models (it varies: {', '.join(MODELLED)}; and its own "
            f"assumptions {', '.join(SIM_KEYS)})")


def _set(data: dict[str, Any], dotted: str, value: object) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[last] = value


def _yaml_value(key: str, text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # the config model says what is wrong with it


def expand(base: Mapping[str, Any], sets: Sequence[str], grids: Sequence[str], cold_start: ColdStart,
           stop_time: float) -> list[Setting]:
    """Every combination of ``grids`` over ``base`` (the config file's mapping) with ``sets`` applied; raises
    SettingsError listing every problem (unknown key, invalid value, a combination the config model refuses)."""
    problems: list[str] = []
    fixed: list[tuple[str, str]] = []
    for item in sets:
        try:
            fixed.append(_pair(item, "--set"))
        except SettingsError as exc:
            problems += exc.problems
    axes: list[tuple[str, list[str]]] = []
    for item in grids:
        try:
            key, values = _pair(item, "--grid")
        except SettingsError as exc:
            problems += exc.problems
            continue
        options = split_values(values)
        if any(not v for v in options):
            problems.append(f"--grid {key}: an empty value in {values!r}")
        axes.append((key, options))
    keys = [k for k, _ in fixed] + [k for k, _ in axes]
    for key in dict.fromkeys(keys):
        if keys.count(key) > 1:
            problems.append(f"{key}: given more than once (in --set or --grid)")
        why = _check_key(key)
        if why:
            problems.append(why)
    if problems:
        raise SettingsError(problems)
    out: list[Setting] = []
    for combo in itertools.product(*(values for _, values in axes)):
        chosen = [*fixed, *zip((k for k, _ in axes), combo, strict=True)]
        out.append(_setting(base, chosen, cold_start, stop_time))
    return out


def _setting(base: Mapping[str, Any], chosen: list[tuple[str, str]], cold_start: ColdStart,
             stop_time: float) -> Setting:
    data = copy.deepcopy(dict(base))
    problems: list[str] = []
    for key, text in chosen:
        if key == "sim.cold_start":
            try:
                cold_start = parse_cold_start(text)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
        elif key == "sim.stop_time":
            try:
                stop_time = parse_duration(text)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
        else:
            _set(data, key, _yaml_value(key, text))
    try:
        config = parse_config(data, environ={})
    except ConfigError as exc:
        where = ", ".join(f"{k}={v}" for k, v in chosen)
        problems += [f"{p} (with {where})" for p in exc.problems]
        config = None
    if problems or config is None:
        raise SettingsError(problems)
    return Setting(config, cold_start, stop_time, dict(chosen))
