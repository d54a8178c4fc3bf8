"""The folder `feedline dev` runs: EventSubscription and Secret manifests.

Every ``*.yaml``/``*.yml`` file directly in the folder is read (the state
directory and subfolders are not); a file may hold several documents. By kind:

- ``feedline.dev/v1alpha1`` ``EventSubscription``: checked against the CRD
  shipped in the package (``schema``: its defaults, structural schema and CEL
  rules), then read into the API's typed model;
- ``v1`` ``Secret``: ``data`` (base64) and ``stringData``, as ``kubectl apply``
  takes them; the subscriptions' ``secretKeyRef``\\s resolve against these;
- any other kind (a Deployment, a ConfigMap...) is ignored and listed.

Any error is a ``ManifestError`` naming the file (and document), the object and
the field; the CLI prints it and exits 2.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from feedline.dev.schema import Problem, Schema, apply_defaults, shipped_schema, validate
from feedline_contracts.eventsubscription import API_VERSION, KIND, EventSubscription

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Source:
    """Where a document came from: the file and, in a multi-document file, which one."""

    path: Path
    document: int = 1
    documents: int = 1

    def __str__(self) -> str:
        if self.documents > 1:
            return f"{self.path} (document {self.document})"
        return str(self.path)


class ManifestError(ValueError):
    """A manifest `feedline dev` cannot run; the message names file, object and field."""

    def __init__(self, source: Source, subject: str, problems: Iterable[Problem | str]) -> None:
        self.source = source
        self.subject = subject
        self.problems = [str(p) for p in problems]
        prefix = f"{source}: {subject}: " if subject else f"{source}: "
        if len(self.problems) == 1:
            text = prefix + self.problems[0]
        else:
            text = prefix.rstrip(" ") + "\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(text)


@dataclass(frozen=True)
class Secret:
    source: Source
    namespace: str
    name: str
    data: dict[str, str]


@dataclass(frozen=True)
class LoadedSubscription:
    source: Source
    subscription: EventSubscription


@dataclass(frozen=True)
class Folder:
    directory: Path
    subscriptions: tuple[LoadedSubscription, ...]
    secrets: dict[tuple[str, str], Secret]
    ignored: tuple[str, ...] = field(default=())

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.secrets.get((namespace, name))
        return None if secret is None else secret.data.get(key)


def manifest_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def _subject(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f'{doc.get("kind", "object")} "{name}"' if name else str(doc.get("kind", ""))


def _name_problems(doc: dict[str, Any]) -> list[Problem]:
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        return [Problem("metadata", "FieldValueRequired", "Required value")]
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return [Problem("metadata.name", "FieldValueRequired", "name is required")]
    problems: list[Problem] = []
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        problems.append(
            Problem(
                "metadata.name",
                "FieldValueInvalid",
                f'"{name:.60}": a lowercase RFC 1123 subdomain must consist of lower case '
                "alphanumeric characters, '-' or '.'",
            )
        )
    namespace = metadata.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or not DNS_SUBDOMAIN.match(namespace)
    ):
        problems.append(Problem("metadata.namespace", "FieldValueInvalid", f"{namespace!r:.60}"))
    return problems


def parse_subscription(
    doc: dict[str, Any], source: Source, schema: Schema | None = None
) -> LoadedSubscription:
    """Check one EventSubscription like the API server would, then read it.

    ``schema``: the CRD's openAPIV3Schema; by default the one shipped in the package.
    """
    if schema is None:
        schema = shipped_schema()
    subject = _subject(doc)
    problems = _name_problems(doc)
    if problems:
        raise ManifestError(source, subject, problems)
    doc = apply_defaults(doc, schema)
    problems = validate(doc, schema)
    if problems:
        raise ManifestError(source, subject, problems)
    try:
        subscription = EventSubscription.from_body(doc)
    except ValidationError as exc:
        raise ManifestError(
            source,
            subject,
            [
                Problem(
                    ".".join(["spec", *(str(p) for p in err["loc"])]),
                    "FieldValueInvalid",
                    err["msg"],
                )
                for err in exc.errors()
            ],
        ) from exc
    return LoadedSubscription(source, subscription)


def parse_secret(doc: dict[str, Any], source: Source) -> Secret:
    subject = _subject(doc)
    problems = _name_problems(doc)
    data: dict[str, str] = {}
    for section in ("data", "stringData"):
        values = doc.get(section) or {}
        if not isinstance(values, dict):
            problems.append(Problem(section, "FieldValueTypeInvalid", "must be a map"))
            continue
        for key, value in values.items():
            path = f"{section}[{key}]"
            if not isinstance(key, str) or not SECRET_KEY.match(key):
                problems.append(
                    Problem(
                        path,
                        "FieldValueInvalid",
                        "a valid config key must "
                        "consist of alphanumeric characters, '-', '_' or '.'",
                    )
                )
                continue
            if not isinstance(value, str):
                problems.append(Problem(path, "FieldValueTypeInvalid", "must be a string"))
                continue
            if section == "data":
                try:
                    data[key] = base64.b64decode(value, validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    problems.append(
                        Problem(
                            path,
                            "FieldValueInvalid",
                            "not base64 of UTF-8 text (use stringData for plain text)",
                        )
                    )
            else:
                data[key] = value  # stringData wins over data, as in Kubernetes
    if problems:
        raise ManifestError(source, subject, problems)
    metadata = doc["metadata"]
    return Secret(source, metadata.get("namespace") or DEFAULT_NAMESPACE, metadata["name"], data)


def _documents(path: Path) -> list[tuple[Source, Any]]:
    try:
        loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(Source(path), "", [f"{where}not valid YAML: {problem}"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(Source(path), "", [f"cannot read: {exc}"]) from exc
    return [(Source(path, i + 1, len(loaded)), doc) for i, doc in enumerate(loaded)]


def _check_references(folder: Folder) -> None:
    for loaded in folder.subscriptions:
        sub = loaded.subscription
        refs = [("spec.readModel.databaseSecretRef", sub.spec.read_model.database_secret_ref)]
        auth = sub.spec.feed.auth
        if auth.type == "ServiceAccountToken":
            raise ManifestError(
                loaded.source,
                f'EventSubscription "{sub.name}"',
                [
                    Problem(
                        "spec.feed.auth.type",
                        "FieldValueNotSupported",
                        '"ServiceAccountToken" needs Kubernetes to issue the token; '
                        'feedline dev supports "None" and "Token"',
                    )
                ],
            )
        if auth.secret_ref is not None:
            refs.append(("spec.feed.auth.secretRef", auth.secret_ref))
        for path, ref in refs:
            secret = folder.secrets.get((sub.namespace, ref.name))
            if secret is None:
                message = (
                    f'Secret "{ref.name}" (namespace {sub.namespace}) not found: put a v1 '
                    f"Secret manifest in a YAML file of {folder.directory} (e.g. secrets.yaml)"
                )
            elif ref.key not in secret.data:
                message = f'Secret "{ref.name}" has no key "{ref.key}" ({secret.source})'
            else:
                continue
            raise ManifestError(
                loaded.source,
                f'EventSubscription "{sub.name}"',
                [Problem(path, "FieldValueNotFound", message)],
            )


def load_folder(directory: Path, schema: Schema | None = None) -> Folder:
    """Read and check every manifest of ``directory``; raise ManifestError on the first bad one."""
    subscriptions: list[LoadedSubscription] = []
    secrets: dict[tuple[str, str], Secret] = {}
    ignored: list[str] = []
    seen: dict[str, Source] = {}
    for path in manifest_files(directory):
        for source, doc in _documents(path):
            if not isinstance(doc, dict):
                raise ManifestError(source, "", ["not a Kubernetes object (expected a mapping)"])
            api_version, kind = doc.get("apiVersion"), doc.get("kind")
            missing = [
                Problem(key, "FieldValueRequired", f"{key} is required")
                for key, value in (("apiVersion", api_version), ("kind", kind))
                if not value
            ]
            if missing:
                raise ManifestError(source, _subject(doc), missing)
            if kind == KIND or api_version == API_VERSION:
                if (api_version, kind) != (API_VERSION, KIND):
                    raise ManifestError(
                        source,
                        _subject(doc),
                        [
                            Problem(
                                "apiVersion" if kind == KIND else "kind",
                                "FieldValueNotSupported",
                                f'"{api_version}/{kind}": feedline dev reads {API_VERSION} {KIND}',
                            )
                        ],
                    )
                loaded = parse_subscription(doc, source, schema)
                name = loaded.subscription.name
                if name in seen:
                    raise ManifestError(
                        source,
                        f'EventSubscription "{name}"',
                        [
                            Problem(
                                "metadata.name",
                                "FieldValueDuplicate",
                                f"also defined in {seen[name]} (names key checkpoints)",
                            )
                        ],
                    )
                seen[name] = source
                subscriptions.append(loaded)
            elif (api_version, kind) == ("v1", "Secret"):
                secret = parse_secret(doc, source)
                secrets[(secret.namespace, secret.name)] = secret
            else:
                ignored.append(f"{source}: {_subject(doc)} ({api_version})")
    folder = Folder(directory, tuple(subscriptions), secrets, tuple(ignored))
    _check_references(folder)
    return folder
