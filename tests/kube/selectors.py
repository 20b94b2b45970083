"""Label and field selectors as the API server parses them (apimachinery ``labels.Parse`` and ``fields``).

Pure functions: a selector string becomes a predicate over an object. Parse errors raise ``SelectorError``, which
the server answers with 400 BadRequest, as the real one does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    """The selector string does not parse."""


# Tokens of labels.Parse: operators, parentheses, commas and identifiers (anything else that is not whitespace).
_TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|<|>|[^\s!=(),<>]+)")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def valid_label_key(key: str) -> bool:
    """A qualified name: an optional DNS-subdomain prefix and ``/``, then a name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_NAME_PART.match(name))


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            # Absent keys satisfy the negative operators, as in apimachinery.
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if not has:
            return False
        try:
            number = int(value or "")
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """``a=b,c!=d,e in (x,y),f notin (z),g,!h,n>3`` into requirements (all must hold); empty matches all."""
    tokens = _tokenize(text or "")
    reqs: list[Requirement] = []
    pos = 0

    def take() -> str | None:
        nonlocal pos
        if pos >= len(tokens):
            return None
        pos += 1
        return tokens[pos - 1]

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    while pos < len(tokens):
        tok = take()
        if tok == "!":
            key = _key(take())
            reqs.append(Requirement(key, "!"))
        else:
            key = _key(tok)
            op = peek()
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
            elif op in ("=", "==", "!="):
                take()
                nxt = peek()
                value = "" if nxt in (None, ",") else _value(take())
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise SelectorError(f"found {peek()!r}, expected: '(' after {op}")
                values: list[str] = []
                while True:
                    nxt = take()
                    if nxt == ")":
                        break
                    if nxt is None:
                        raise SelectorError("found end of string, expected: ')'")
                    if nxt == ",":
                        continue
                    values.append(_value(nxt))
                if not values:
                    raise SelectorError(f"for 'in', 'notin' operators, values set can't be empty ({key})")
                reqs.append(Requirement(key, op, tuple(values)))
            elif op in ("<", ">"):
                take()
                raw = take() or ""
                if not re.fullmatch(r"-?\d+", raw):
                    raise SelectorError(f"for 'Gt', 'Lt' operators, the value must be an integer: {raw!r}")
                reqs.append(Requirement(key, "gt" if op == ">" else "lt", (raw,)))
            else:
                raise SelectorError(f"found {op!r}, expected: in, notin, =, ==, !=, gt, lt")
        sep = take()
        if sep not in (None, ","):
            raise SelectorError(f"found {sep!r}, expected: ','")
        if sep == "," and pos >= len(tokens):
            raise SelectorError("found end of string after ','")
    return tuple(reqs)


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SelectorError(f"unable to parse requirement near {text[pos:]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def _key(tok: str | None) -> str:
    if tok is None or tok in ("(", ")", ",", "=", "==", "!=", "!", "<", ">") or not valid_label_key(tok):
        raise SelectorError(f"invalid label key {tok!r}")
    return tok


def _value(tok: str | None) -> str:
    if tok is None or not valid_label_value(tok):
        raise SelectorError(f"invalid label value {tok!r}")
    return tok


def label_matcher(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    reqs = parse_label_selector(text)
    return lambda labels: all(r.matches(labels) for r in reqs)


def selector_string(selector: Mapping[str, Any]) -> str:
    """A ``metav1.LabelSelector`` as the string form the API shows in ``Scale.status.selector``."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], sorted(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(sorted(parts))


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Does a structured ``metav1.LabelSelector`` (matchLabels, matchExpressions) select these labels?"""
    return label_matcher(selector_string(selector))(labels)


# Field selectors: the fields each resource supports (others get 400, as from the real server).
FIELD_LABELS: dict[str, frozenset[str]] = {
    "pods": frozenset({
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
        "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
    }),
    "events": frozenset({
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
        "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
        "reason", "reportingComponent", "source", "type",
    }),
    "nodes": frozenset({"spec.unschedulable"}),
    "replicasets": frozenset({"status.replicas"}),
}
_ALWAYS = frozenset({"metadata.name", "metadata.namespace"})


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    if path == "source":  # events: "source" is the reporting component's name
        cur: Any = (obj.get("source") or {}).get("component", "")
    else:
        cur = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return "" if cur is None else str(cur)


def _split_unescaped(text: str, sep: str) -> list[str]:
    out, cur, i = [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur += text[i : i + 2]
            i += 2
            continue
        if ch == sep:
            out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    out.append(cur)
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def field_matcher(resource: str, text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """``metadata.name=x,status.phase!=Running`` for ``resource``; unsupported fields raise ``SelectorError``."""
    checks: list[tuple[str, bool, str]] = []
    for term in _split_unescaped((text or "").strip(), ","):
        if not term.strip():
            continue
        m = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)(.*)$", term)
        if not m:
            raise SelectorError(f"invalid selector: {term!r}; can't understand it")
        path, op, raw = m.group(1), m.group(2), m.group(3)
        if path not in _ALWAYS and path not in FIELD_LABELS.get(resource, frozenset()):
            raise SelectorError(f'field label not supported: {path}')
        checks.append((path, op == "!=", _unescape(raw.strip())))
    return lambda obj: all((_field_value(obj, p) == v) != neg for p, neg, v in checks)
