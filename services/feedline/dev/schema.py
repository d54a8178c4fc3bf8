"""The EventSubscription CRD's rules, checked locally (no API server in `feedline dev`).

The schema is the CRD shipped inside the feedline package
(``feedline_contracts.eventsubscription``, ``crd.yaml``, generated from the
model by ``make crd``: the same file the chart installs), so local mode, from
a source tree or in the image, refuses what the API server refuses, with the
same field paths:

1. defaults are applied (like the API server, before validation);
2. the structural schema: ``type``, ``required``, ``properties`` (an unknown
   field is an error, as with ``kubectl --validate=strict``), ``enum``,
   ``minLength``/``maxLength``, ``pattern``, ``minimum``/``maximum``,
   ``maxItems``, list types ``set`` and ``map``, int-or-string;
3. the CEL rules (``x-kubernetes-validations``) themselves, evaluated by a
   real CEL implementation (cel-python, ``celpy``) with the Kubernetes CEL
   library functions the rules use (``isURL``, ``url``, and the URL getters).

Everything here is pure: dicts in, problems out.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import yaml
from celpy import Environment, Runner, celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from feedline_contracts.eventsubscription import crd as crd_file

Schema = dict[str, Any]

_REASONS = {
    "FieldValueRequired": "Required value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueInvalid": "Invalid value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueTypeInvalid": "Invalid value",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "FieldValueUnknown": "Unknown field",
    "FieldValueNotFound": "Not found",
}


@dataclass(frozen=True)
class Problem:
    """One violation: the field path (``spec.schedule``), a reason, a message."""

    path: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {_REASONS.get(self.reason, self.reason)}: {self.message}"


@functools.cache
def shipped_schema() -> Schema:
    """The openAPIV3Schema of the CRD shipped inside the package (shared: do not mutate)."""
    return crd_file.openapi_schema(crd_file.shipped())


def load_crd_schema(path: Path) -> Schema:
    """The openAPIV3Schema of another CRD file (``feedline dev --crd PATH``)."""
    return crd_file.openapi_schema(yaml.safe_load(path.read_text()))


# --- defaulting --------------------------------------------------------------------


def apply_defaults(value: Any, schema: Schema) -> Any:
    """A copy of ``value`` with the schema's defaults filled in (as the API server does)."""
    value = copy.deepcopy(value)
    _default(value, schema)
    return value


def _default(value: Any, schema: Schema) -> None:
    if isinstance(value, dict):
        for key, prop in schema.get("properties", {}).items():
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value:
                _default(value[key], prop)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(item, schema["items"])


# --- structural validation ---------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_ok(value: Any, kind: str) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    }
    check = checks.get(kind)
    return check is None or check(value)


def _shown(value: Any) -> str:
    """A value in a message, as the API server shows it (JSON: strings quoted)."""
    return json.dumps(value, separators=(",", ":"), default=str)[:120]


def _type_name(value: Any) -> str:
    for name, kind in (
        ("boolean", bool),
        ("integer", int),
        ("number", float),
        ("string", str),
        ("array", list),
        ("object", dict),
    ):
        if isinstance(value, kind):
            return name
    return "null"


def validate(value: Any, schema: Schema, path: str = "") -> list[Problem]:
    """Every violation of ``schema`` (already defaulted ``value``), structural then CEL."""
    problems = list(_structural(value, schema, path))
    if problems:
        # CEL rules are only meaningful on a well-typed object.
        return problems
    return list(_rules(value, schema, path))


# The API server's words (kube-openapi's validation errors), so that a message
# reads the same locally and from `kubectl apply`.
def _structural(value: Any, schema: Schema, path: str) -> Iterator[Problem]:
    if schema.get("x-kubernetes-int-or-string"):
        if not _type_ok(value, "integer") and not isinstance(value, str):
            kind = _type_name(value)
            yield Problem(
                path,
                "FieldValueTypeInvalid",
                f'"{kind}": {path} in body must be of type integer or string: "{kind}"',
            )
            return
    elif "type" in schema and not _type_ok(value, schema["type"]):
        kind = _type_name(value)
        yield Problem(
            path,
            "FieldValueTypeInvalid",
            f'"{kind}": {path} in body must be of type {schema["type"]}: "{kind}"',
        )
        return
    if "enum" in schema and value not in schema["enum"]:
        accepted = ", ".join(f'"{v}"' for v in schema["enum"])
        yield Problem(
            path, "FieldValueNotSupported", f"{_shown(value)}: supported values: {accepted}"
        )
    if isinstance(value, str):
        yield from _string(value, schema, path)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield Problem(
                path,
                "FieldValueInvalid",
                f"{value}: {path} in body should be greater than or equal to {schema['minimum']}",
            )
        if "maximum" in schema and value > schema["maximum"]:
            yield Problem(
                path,
                "FieldValueInvalid",
                f"{value}: {path} in body should be less than or equal to {schema['maximum']}",
            )
    elif isinstance(value, list):
        yield from _array(value, schema, path)
    elif isinstance(value, dict):
        yield from _object(value, schema, path)


def _string(value: str, schema: Schema, path: str) -> Iterator[Problem]:
    if "minLength" in schema and len(value) < schema["minLength"]:
        yield Problem(
            path,
            "FieldValueInvalid",
            f"{_shown(value)}: {path} in body should be at least {schema['minLength']} chars long",
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        yield Problem(
            path, "FieldValueTooLong", f"may not be more than {schema['maxLength']} bytes"
        )
    pattern = schema.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        yield Problem(
            path, "FieldValueInvalid", f"{_shown(value)}: {path} in body should match '{pattern}'"
        )


def _array(value: list[Any], schema: Schema, path: str) -> Iterator[Problem]:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        yield Problem(
            path, "FieldValueTooMany", f"{len(value)}: must have at most {schema['maxItems']} items"
        )
    list_type = schema.get("x-kubernetes-list-type")
    seen: list[Any] = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if "items" in schema:
            yield from _structural(item, schema["items"], item_path)
        if list_type == "set":
            key: Any = item
        elif list_type == "map" and isinstance(item, dict):
            key = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys", [])}
        else:
            continue
        if key in seen:
            yield Problem(item_path, "FieldValueDuplicate", _shown(key))
        seen.append(key)


def _object(value: dict[str, Any], schema: Schema, path: str) -> Iterator[Problem]:
    properties: dict[str, Schema] = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            yield Problem(_join(path, key), "FieldValueRequired", "Required value")
    for key, item in value.items():
        if key in properties:
            yield from _structural(item, properties[key], _join(path, key))
        elif properties:
            yield Problem(
                _join(path, key), "FieldValueUnknown", f'unknown field "{_join(path, key)}"'
            )


# --- the Kubernetes CEL library (the functions the CRD's rules use) ----------------
# As in k8s.io/apiserver/pkg/cel/library/urls.go: isURL and url() accept what Go's
# url.ParseRequestURI accepts (an absolute URL, or an absolute path).

_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_URL_HOST = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%:\[\]-]*")


@dataclass(frozen=True)
class URL:
    """A parsed URL (the Kubernetes CEL ``URL`` type)."""

    parts: SplitResult

    @property
    def host(self) -> str:
        return self.parts.netloc.rpartition("@")[2]

    @property
    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1 : host.find("]")] if "]" in host else host[1:]
        return host.partition(":")[0]

    @property
    def port(self) -> str:
        host = self.host
        if host.startswith("["):
            host = host[host.find("]") + 1 :] if "]" in host else ""
        return host.rpartition(":")[2] if ":" in host else ""


def parse_request_uri(text: str) -> URL | None:
    """Like Go's ``url.ParseRequestURI``: None where it returns an error."""
    if not text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return None
    if not text.startswith("/"):
        scheme, colon, _ = text.partition(":")
        if not colon or not _URL_SCHEME.fullmatch(scheme):
            return None  # "missing protocol scheme"
    try:
        parts = urlsplit(text)
        _ = parts.port  # an invalid port is an error
    except ValueError:
        return None
    url = URL(parts)
    if not _URL_HOST.fullmatch(url.host):
        return None
    return url


def _cel_is_url(value: celtypes.Value) -> celtypes.BoolType:
    return celtypes.BoolType(isinstance(value, str) and parse_request_uri(value) is not None)


def _cel_url(value: celtypes.Value) -> URL | CELEvalError:
    url = parse_request_uri(str(value)) if isinstance(value, str) else None
    if url is None:
        return CELEvalError(f"URL parse error during conversion from string: {value!s:.60}")
    return url


def _url_getter(read: Callable[[URL], str]) -> Callable[[Any], celtypes.Value]:
    def get(url: Any) -> celtypes.Value:
        if not isinstance(url, URL):
            return CELEvalError(f"no such overload: {url!r:.60}")  # type: ignore[return-value]
        return celtypes.StringType(read(url))

    return get


KUBERNETES_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "isURL": _cel_is_url,
    "url": _cel_url,
    "getScheme": _url_getter(lambda u: u.parts.scheme),
    "getHost": _url_getter(lambda u: u.host),
    "getHostname": _url_getter(lambda u: u.hostname),
    "getPort": _url_getter(lambda u: u.port),
    "getEscapedPath": _url_getter(lambda u: u.parts.path),
}


# --- CEL rules (x-kubernetes-validations) -----------------------------------------


@functools.cache
def compile_rule(expression: str) -> Runner:
    """The CEL program of a rule, with the Kubernetes functions (CELParseError if invalid)."""
    env = Environment()
    return env.program(env.compile(expression), functions=KUBERNETES_FUNCTIONS)


def evaluate_rule(expression: str, value: Any) -> bool | str:
    """True when ``value`` (as ``self``) satisfies the CEL rule; else False or the error."""
    try:
        result = compile_rule(expression).evaluate({"self": json_to_cel(value)})
    except CELParseError as exc:
        return f"compilation error: {exc}"
    except CELEvalError as exc:
        return f"evaluation error: {exc.args[0] if exc.args else exc}"
    if isinstance(result, CELEvalError):
        return f"evaluation error: {result.args[0] if result.args else result}"
    if not isinstance(result, celtypes.BoolType):
        return f"rule did not evaluate to a bool: {result!r:.60}"
    return bool(result)


def _walk_rules(schema: Schema, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for key, prop in schema.get("properties", {}).items():
        yield from _walk_rules(prop, _join(path, key))
    if "items" in schema:
        yield from _walk_rules(schema["items"], f"{path}[]")


def rules_of(schema: Schema) -> list[tuple[str, str]]:
    """Every CEL rule of the schema: (the schema path it is on, the expression)."""
    return [(path, rule["rule"]) for path, rule in _walk_rules(schema)]


def _rules(value: Any, schema: Schema, path: str) -> Iterator[Problem]:
    for rule in schema.get("x-kubernetes-validations", []):
        outcome = evaluate_rule(rule["rule"], value)
        if outcome is True:
            continue
        field_path = rule.get("fieldPath", "")
        message = " ".join(str(rule.get("message", rule["rule"])).split())
        if isinstance(outcome, str):
            message = f"{message} ({outcome})"
        reason = rule.get("reason", "FieldValueInvalid")
        if reason == "FieldValueInvalid" and not field_path and not isinstance(value, dict | list):
            message = f"{_shown(value)}: {message}"  # as the API server: the value first
        yield Problem(
            f"{path}{field_path}" if path else field_path.lstrip("."),
            reason,
            message,
        )
    if isinstance(value, dict):
        for key, prop in schema.get("properties", {}).items():
            if key in value:
                yield from _rules(value[key], prop, _join(path, key))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _rules(item, schema["items"], f"{path}[{index}]")
