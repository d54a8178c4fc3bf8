"""The EventSubscription CRD's rules, checked locally (no API server in `feedline dev`).

The schema is loaded from the CRD file itself
(charts/feedline-operator/crds/eventsubscriptions.feedline.dev.yaml), so local
mode refuses what the API server refuses, with the same field paths:

1. defaults are applied (like the API server, before validation);
2. the structural schema: ``type``, ``required``, ``properties`` (an unknown
   field is an error, as with ``kubectl --validate=strict``), ``enum``,
   ``minLength``/``maxLength``, ``pattern``, ``minimum``/``maximum``,
   ``maxItems``, list types ``set`` and ``map``, int-or-string;
3. the CEL rules (``x-kubernetes-validations``) of the shapes the CRD uses,
   recognised by pattern and evaluated in Python. ``unchecked_rules`` lists any
   rule this module does not understand (a unit test keeps it empty).

Everything here is pure: dicts in, problems out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

CRD_RELATIVE_PATH = Path("charts/feedline-operator/crds/eventsubscriptions.feedline.dev.yaml")

Schema = dict[str, Any]

_REASONS = {
    "FieldValueRequired": "Required value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueInvalid": "Invalid value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueTypeInvalid": "Invalid type",
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


def find_crd(start: Path | None = None) -> Path | None:
    """The CRD file of the source tree this package runs from (editable install)."""
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        candidate = parent / CRD_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    return None


def load_crd_schema(path: Path) -> Schema:
    """The openAPIV3Schema of the served version."""
    crd = yaml.safe_load(path.read_text())
    versions = crd["spec"]["versions"]
    served = next(v for v in versions if v.get("served", True))
    schema: Schema = served["schema"]["openAPIV3Schema"]
    return schema


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
        # Like the API server: CEL rules are only meaningful on a well-typed object.
        return problems
    return list(_rules(value, schema, path))


def _structural(value: Any, schema: Schema, path: str) -> Iterator[Problem]:
    if schema.get("x-kubernetes-int-or-string"):
        if not _type_ok(value, "integer") and not isinstance(value, str):
            yield Problem(path, "FieldValueTypeInvalid", "must be an integer or a string")
            return
    elif "type" in schema and not _type_ok(value, schema["type"]):
        yield Problem(
            path,
            "FieldValueTypeInvalid",
            f'must be of type {schema["type"]}, got {_type_name(value)} "{value!s:.60}"',
        )
        return
    if "enum" in schema and value not in schema["enum"]:
        accepted = ", ".join(f'"{v}"' for v in schema["enum"])
        yield Problem(
            path, "FieldValueNotSupported", f'"{value!s:.60}": supported values: {accepted}'
        )
    if isinstance(value, str):
        yield from _string(value, schema, path)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield Problem(path, "FieldValueInvalid", f"{value}: must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            yield Problem(path, "FieldValueInvalid", f"{value}: must be <= {schema['maximum']}")
    elif isinstance(value, list):
        yield from _array(value, schema, path)
    elif isinstance(value, dict):
        yield from _object(value, schema, path)


def _string(value: str, schema: Schema, path: str) -> Iterator[Problem]:
    if "minLength" in schema and len(value) < schema["minLength"]:
        yield Problem(
            path,
            "FieldValueInvalid",
            f'"{value}": must be at least {schema["minLength"]} characters',
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        yield Problem(
            path, "FieldValueTooLong", f"may not be more than {schema['maxLength']} characters"
        )
    pattern = schema.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        yield Problem(path, "FieldValueInvalid", f"\"{value:.60}\": should match '{pattern}'")


def _array(value: list[Any], schema: Schema, path: str) -> Iterator[Problem]:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        yield Problem(path, "FieldValueTooMany", f"must have at most {schema['maxItems']} items")
    list_type = schema.get("x-kubernetes-list-type")
    seen: list[Any] = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if "items" in schema:
            yield from _structural(item, schema["items"], item_path)
        if list_type == "set":
            key: Any = item
        elif list_type == "map" and isinstance(item, dict):
            key = tuple(item.get(k) for k in schema.get("x-kubernetes-list-map-keys", []))
        else:
            continue
        if key in seen:
            yield Problem(item_path, "FieldValueDuplicate", f"{item!s:.60}")
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
            yield Problem(_join(path, key), "FieldValueUnknown", f'unknown field "{key}"')


# --- CEL rules (x-kubernetes-validations) -----------------------------------------

# A rule's evaluation: True when the value satisfies it.
Check = Callable[[Any], bool]


def _has(value: Any, field: str) -> bool:
    return isinstance(value, dict) and field in value


def _matches(pattern: str) -> Check:
    flags = 0
    # CEL (RE2) allows (?i) after ^; Python wants global flags first.
    if "(?i)" in pattern:
        pattern, flags = pattern.replace("(?i)", "", 1), re.IGNORECASE
    compiled = re.compile(pattern, flags)
    return lambda v: isinstance(v, str) and compiled.search(v) is not None


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _start_position(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 1
    return isinstance(value, str) and (
        value in ("Beginning", "Head") or re.fullmatch(r"[1-9][0-9]{0,17}", value) is not None
    )


def _not_in(field: str, names: frozenset[str]) -> Check:
    return lambda v: not (_has(v, field) and v[field] in names)


def _not_prefixed(field: str, prefix: str) -> Check:
    return lambda v: not (_has(v, field) and str(v[field]).startswith(prefix))


def _ge_field(optional: str, left: str, right: str) -> Check:
    def check(v: Any) -> bool:
        if not _has(v, optional):
            return True
        return bool(v.get(left, 0) >= v.get(right, 0))

    return check


# Each: a pattern over the rule's text (whitespace collapsed) -> the Python check.
_RULE_SHAPES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], Check]]] = [
    (
        re.compile(r"self\.metadata\.name\.size\(\) <= (\d+)"),
        lambda m: lambda v: len(str(v.get("metadata", {}).get("name", ""))) <= int(m[1]),
    ),
    (
        re.compile(r"self\.(\w+) != '(\w+)' \|\| has\(self\.(\w+)\)"),
        lambda m: lambda v: v.get(m[1]) != m[2] or _has(v, m[3]),
    ),
    (
        re.compile(r"self\.(\w+) != '(\w+)' \|\| !has\(self\.(\w+)\)"),
        lambda m: lambda v: v.get(m[1]) != m[2] or not _has(v, m[3]),
    ),
    (
        re.compile(r"self\.(\w+) == '(\w+)' \|\| !has\(self\.(\w+)\)"),
        lambda m: lambda v: v.get(m[1]) == m[2] or not _has(v, m[3]),
    ),
    (
        re.compile(r"!has\(self\.(\w+)\) \|\| self\.(\w+) >= self\.(\w+)"),
        lambda m: _ge_field(m[1], m[2], m[3]),
    ),
    (
        re.compile(r"self >= (-?\d+) && self <= (-?\d+)"),
        lambda m: lambda v: int(m[1]) <= v <= int(m[2]),
    ),
    (re.compile(r"self >= (-?\d+)"), lambda m: lambda v: v >= int(m[1])),
    (re.compile(r"self\.matches\('(.*)'\)"), lambda m: _matches(m[1])),
    (
        re.compile(r"!\(self\.(\w+) in \[(.*)\]\)"),
        lambda m: _not_in(m[1], frozenset(re.findall(r"'([^']*)'", m[2]))),
    ),
    (
        re.compile(r"!self\.(\w+)\.startsWith\('([^']*)'\)"),
        lambda m: _not_prefixed(m[1], m[2]),
    ),
    (
        re.compile(
            r"isURL\(self\) && url\(self\)\.getScheme\(\) in \['http', 'https'\] "
            r"&& url\(self\)\.getHostname\(\) != ''"
        ),
        lambda m: _is_http_url,
    ),
    (
        re.compile(
            r"type\(self\) == int \? self >= 1 : \(self == 'Beginning' \|\| self == 'Head' "
            r"\|\| self\.matches\('\^\[1-9\]\[0-9\]\{0,17\}\$'\)\)"
        ),
        lambda m: _start_position,
    ),
]


def compile_rule(rule: str) -> Check | None:
    """The Python check for a CEL rule of a known shape, or None."""
    text = " ".join(rule.split())
    for pattern, build in _RULE_SHAPES:
        match = pattern.fullmatch(text)
        if match:
            return build(match)
    return None


def _walk_rules(schema: Schema, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for key, prop in schema.get("properties", {}).items():
        yield from _walk_rules(prop, _join(path, key))
    if "items" in schema:
        yield from _walk_rules(schema["items"], f"{path}[]")


def unchecked_rules(schema: Schema) -> list[str]:
    """CEL rules of the schema this module cannot evaluate (should be none)."""
    return [
        f"{path}: {rule['rule']}"
        for path, rule in _walk_rules(schema)
        if compile_rule(rule["rule"]) is None
    ]


def _rules(value: Any, schema: Schema, path: str) -> Iterator[Problem]:
    for rule in schema.get("x-kubernetes-validations", []):
        check = compile_rule(rule["rule"])
        if check is None:
            continue
        try:
            ok = check(value)
        except (TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            field_path = rule.get("fieldPath", "")
            if not path and not field_path and "self.metadata.name" in rule["rule"]:
                field_path = ".metadata.name"  # the root rule is about the name
            yield Problem(
                f"{path}{field_path}" if path else field_path.lstrip("."),
                rule.get("reason", "FieldValueInvalid"),
                str(rule.get("message", rule["rule"])).strip(),
            )
    if isinstance(value, dict):
        for key, prop in schema.get("properties", {}).items():
            if key in value:
                yield from _rules(value[key], prop, _join(path, key))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _rules(item, schema["items"], f"{path}[{index}]")
