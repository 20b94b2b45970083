"""A config's problems as a person reads them: ConfigError, one `key.path: reason` line per problem.

pydantic's own messages name its types and internal locations; someone editing YAML needs the dotted path they
wrote, a reason in plain words and, for a misspelt key, the key they meant. The models are known only through
the root model passed in, so this module imports nothing from lbproxy.config and no cycle forms.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["ConfigError", "Loc"]

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """The config cannot be used; `problems` holds every reason, each `key.path: reason`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _field_errors(problems: list[tuple[Loc, str]]) -> PydanticCustomError:
    """Errors located at fields of a model (relative locs), raised by a check that spans several fields."""
    return PydanticCustomError("lbproxy_field", "{reason}", {"reason": problems[0][1], "problems": problems})


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


def _annotation_at(loc: Loc | list[str], root: type[BaseModel]) -> Any:
    """The type a path from `root` holds (`_NOT_A_SETTING` if none): settings models by field, dicts by any key."""
    current: Any = root
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


def _names_a_setting(parts: list[str], root: type[BaseModel]) -> bool:
    return _annotation_at(parts, root) is not _NOT_A_SETTING


def _model_at(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The settings model that holds the keys at `loc`, to suggest the key a typo meant."""
    current = _annotation_at(loc, root)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unknown_key(loc: Loc, root: type[BaseModel]) -> str:
    model = _model_at(loc[:-1], root)
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


def _reason(error: Any, root: type[BaseModel]) -> str:
    kind, ctx, loc = error["type"], error.get("ctx") or {}, tuple(error["loc"])
    if kind == "extra_forbidden":
        return _unknown_key(loc, root)
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


def _problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if error["type"] == "lbproxy_field":
            for sub_loc, reason in (error.get("ctx") or {}).get("problems", []):
                problems.append(f"{_path(loc + tuple(sub_loc))}: {reason}")
        else:
            problems.append(f"{_path(loc, last_is_key=error['type'] == 'invalid_key')}: {_reason(error, root)}")
    return list(dict.fromkeys(problems))
