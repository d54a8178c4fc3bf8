"""The folder `feedline dev` runs: EventSubscription and Secret manifests.

Every ``*.yaml``/``*.yml`` file directly in the folder is read (the state
directory and subfolders are not); a file may hold several documents. By kind:

- ``feedline.dev/v1alpha1`` ``EventSubscription``: checked against the CRD
  shipped in the package (``schema``: its defaults, structural schema and CEL
  rules), then read into the API's typed model;
- ``v1`` ``Secret``: ``data`` (base64) and ``stringData``, as ``kubectl apply``
  takes them; the subscriptions' ``secretKeyRef``\\s resolve against these;
- a values file of the ``feedline-service`` chart that runs a service of your
  own (``feedlineService`` and ``serviceApp``, no ``kind``: what `feedline
  new-service` writes in ``deploy/values.yaml``): `feedline dev` runs that
  service beside the examples (``ServiceValues``);
- any other kind (a Deployment, a ConfigMap...) is ignored and listed.

Every error of the folder is collected (``FolderError``), each naming the
file (and document), the object and the field; the CLI prints them all and
exits 2.
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
from feedline.services.registry import SERVICES
from feedline_contracts.eventsubscription import API_VERSION, KIND, EventSubscription
from feedline_contracts.service_values import (
    SERVICE_APP_FORM,
    SERVICE_APP_KEY,
    SERVICE_APP_PATTERN,
    SERVICE_NAME_FORM,
    SERVICE_NAME_KEY,
    SERVICE_NAME_PATTERN,
)

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
    """A manifest `feedline dev` cannot run; one line per problem, naming file, object, field."""

    def __init__(self, source: Source, subject: str, problems: Iterable[Problem | str]) -> None:
        self.source = source
        self.subject = subject
        self.problems = [str(p) for p in problems]
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        prefix = f"{self.source}: {self.subject}: " if self.subject else f"{self.source}: "
        return [prefix + problem for problem in self.problems]


class FolderError(ManifestError):
    """Every bad manifest of a folder at once (the first one's file, object and problems)."""

    def __init__(self, errors: Iterable[ManifestError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        ValueError.__init__(self, "\n".join(line for e in self.errors for line in e.lines()))
        self.source, self.subject, self.problems = first.source, first.subject, first.problems

    def lines(self) -> list[str]:
        return [line for error in self.errors for line in error.lines()]


@dataclass(frozen=True)
class Secret:
    source: Source
    namespace: str
    name: str
    data: dict[str, str]
    # Where each key was written: "stringData[dsn]" or "data[dsn]" (for messages).
    fields: dict[str, str] = field(default_factory=dict)

    def field_of(self, key: str) -> str:
        return self.fields.get(key, f"data[{key}]")


@dataclass(frozen=True)
class LoadedSubscription:
    source: Source
    subscription: EventSubscription


@dataclass(frozen=True)
class ServiceValues:
    """A service of your own: the feedline-service chart's values that name it."""

    source: Source
    name: str  # feedlineService
    app: str  # serviceApp: package.module:attribute


@dataclass(frozen=True)
class Folder:
    directory: Path
    subscriptions: tuple[LoadedSubscription, ...]
    secrets: dict[tuple[str, str], Secret]
    ignored: tuple[str, ...] = field(default=())
    services: tuple[ServiceValues, ...] = field(default=())

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
    fields: dict[str, str] = {}
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
            fields[key] = path
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
    namespace = metadata.get("namespace") or DEFAULT_NAMESPACE
    return Secret(source, namespace, metadata["name"], data, fields)


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


def reference_errors(
    folder: Folder,
    invalid_secrets: frozenset[tuple[str, str]] = frozenset(),
    unreadable: tuple[Path, ...] = (),
) -> list[ManifestError]:
    """What the kubelet would refuse: a Secret or key that is not in the folder.

    ``invalid_secrets``: Secrets already reported as invalid (not reported again as
    missing); ``unreadable``: files reported as not YAML (a missing Secret may be there).
    """
    errors: list[ManifestError] = []
    for loaded in folder.subscriptions:
        sub = loaded.subscription
        problems: list[Problem] = []
        refs = [("spec.readModel.databaseSecretRef", sub.spec.read_model.database_secret_ref)]
        auth = sub.spec.feed.auth
        if auth.type == "ServiceAccountToken":
            problems.append(
                Problem(
                    "spec.feed.auth.type",
                    "FieldValueNotSupported",
                    '"ServiceAccountToken" needs Kubernetes to issue the token; '
                    'feedline dev supports "None" and "Token"',
                )
            )
        if auth.secret_ref is not None:
            refs.append(("spec.feed.auth.secretRef", auth.secret_ref))
        for path, ref in refs:
            secret = folder.secrets.get((sub.namespace, ref.name))
            if (sub.namespace, ref.name) in invalid_secrets:
                continue
            if secret is None:
                message = (
                    f'Secret "{ref.name}" (namespace {sub.namespace}) not found: put a v1 '
                    f"Secret manifest in a YAML file of {folder.directory} (e.g. secrets.yaml)"
                )
                if unreadable:
                    files = ", ".join(p.name for p in unreadable)
                    message += f"; or fix {files} (not valid YAML), if it is there"
            elif ref.key not in secret.data:
                message = f'Secret "{ref.name}" has no key "{ref.key}" ({secret.source})'
            else:
                continue
            problems.append(Problem(path, "FieldValueNotFound", message))
        if problems:
            errors.append(ManifestError(loaded.source, f'EventSubscription "{sub.name}"', problems))
    return errors


def is_service_values(doc: dict[str, Any]) -> bool:
    """A feedline-service values file (no apiVersion or kind; feedlineService set)."""
    return SERVICE_NAME_KEY in doc and "apiVersion" not in doc and "kind" not in doc


def parse_service_values(doc: dict[str, Any], source: Source) -> ServiceValues | None:
    """The service a values file runs; None for an example's (dev runs those anyway)."""
    name, app = doc.get(SERVICE_NAME_KEY), doc.get(SERVICE_APP_KEY) or ""
    subject = f"{SERVICE_NAME_KEY} {name!r:.60}"
    problems: list[Problem] = []
    if not isinstance(name, str) or not SERVICE_NAME_PATTERN.fullmatch(name):
        problems.append(
            Problem(
                SERVICE_NAME_KEY, "FieldValueInvalid", f"{name!r:.60}: expected {SERVICE_NAME_FORM}"
            )
        )
    if not isinstance(app, str) or (app and not SERVICE_APP_PATTERN.fullmatch(app)):
        problems.append(
            Problem(
                SERVICE_APP_KEY, "FieldValueInvalid", f"{app!r:.100}: expected {SERVICE_APP_FORM}"
            )
        )
    elif not app and isinstance(name, str) and name not in SERVICES:
        problems.append(
            Problem(
                SERVICE_APP_KEY,
                "FieldValueRequired",
                f"{name!r} is not an example service ({', '.join(SERVICES)}): set "
                f"{SERVICE_APP_KEY} to its ServiceDefinition, {SERVICE_APP_FORM}",
            )
        )
    elif app and name in SERVICES:
        problems.append(
            Problem(
                SERVICE_NAME_KEY,
                "FieldValueDuplicate",
                f"{name!r} is an example service's name: give your service another",
            )
        )
    if problems:
        raise ManifestError(source, subject, problems)
    assert isinstance(name, str)
    assert isinstance(app, str)
    return ServiceValues(source, name, app) if app else None


def _add_service(
    services: dict[str, ServiceValues], doc: dict[str, Any], source: Source
) -> list[ManifestError]:
    """Add the values file's service to ``services``; the error when it cannot be."""
    try:
        values = parse_service_values(doc, source)
    except ManifestError as exc:
        return [exc]
    if values is None:
        return []
    if values.name in services:
        duplicate = Problem(
            SERVICE_NAME_KEY, "FieldValueDuplicate", f"also in {services[values.name].source}"
        )
        return [ManifestError(source, f"{SERVICE_NAME_KEY} {values.name!r}", [duplicate])]
    services[values.name] = values
    return []


def _namespaced_name(doc: dict[str, Any]) -> tuple[str, str]:
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        return (DEFAULT_NAMESPACE, "")
    return (str(metadata.get("namespace") or DEFAULT_NAMESPACE), str(metadata.get("name") or ""))


def _kind_problems(doc: dict[str, Any]) -> list[Problem]:
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    missing = [
        Problem(key, "FieldValueRequired", f"{key} is required")
        for key, value in (("apiVersion", api_version), ("kind", kind))
        if not value
    ]
    if missing:
        return missing
    if (kind == KIND or api_version == API_VERSION) and (api_version, kind) != (API_VERSION, KIND):
        return [
            Problem(
                "apiVersion" if kind == KIND else "kind",
                "FieldValueNotSupported",
                f'"{api_version}/{kind}": feedline dev reads {API_VERSION} {KIND}',
            )
        ]
    return []


def load_folder(directory: Path, schema: Schema | None = None) -> Folder:
    """Read and check every manifest of ``directory``; FolderError lists every bad one."""
    folder, errors = read_folder(directory, schema)
    if errors:
        raise FolderError(errors)
    return folder


def read_folder(
    directory: Path, schema: Schema | None = None
) -> tuple[Folder, list[ManifestError]]:
    """Every good manifest of ``directory``, and an error for each bad one."""
    subscriptions: list[LoadedSubscription] = []
    secrets: dict[tuple[str, str], Secret] = {}
    services: dict[str, ServiceValues] = {}
    ignored: list[str] = []
    errors: list[ManifestError] = []
    invalid_secrets: set[tuple[str, str]] = set()
    unreadable: list[Path] = []
    seen: dict[str, Source] = {}
    for path in manifest_files(directory):
        try:
            documents = _documents(path)
        except ManifestError as exc:
            errors.append(exc)
            unreadable.append(path)
            continue
        for source, doc in documents:
            if not isinstance(doc, dict):
                errors.append(
                    ManifestError(source, "", ["not a Kubernetes object (expected a mapping)"])
                )
                continue
            if is_service_values(doc):
                errors.extend(_add_service(services, doc, source))
                continue
            problems = _kind_problems(doc)
            if problems:
                errors.append(ManifestError(source, _subject(doc), problems))
                continue
            api_version, kind = doc["apiVersion"], doc["kind"]
            try:
                if (api_version, kind) == (API_VERSION, KIND):
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
            except ManifestError as exc:
                errors.append(exc)
                if kind == "Secret":
                    invalid_secrets.add(_namespaced_name(doc))
    folder = Folder(
        directory, tuple(subscriptions), secrets, tuple(ignored), tuple(services.values())
    )
    errors.extend(reference_errors(folder, frozenset(invalid_secrets), tuple(unreadable)))
    return folder, errors


SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__", "venv"})
_DECLARES_SUBSCRIPTION = re.compile(r"^kind:\s*EventSubscription\s*$", re.MULTILINE)


def _subfolders(directory: Path) -> list[Path]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    return [
        p
        for p in entries
        if p.is_dir() and not p.name.startswith(".") and p.name not in SKIPPED_FOLDERS
    ]


def folders_with_subscriptions(directory: Path, depth: int = 2, limit: int = 3) -> list[Path]:
    """Subfolders (``depth`` levels down) holding a YAML file that declares an EventSubscription.

    A hint for `feedline dev` run on the wrong folder (the repository's root,
    say); files are only scanned as text, not checked.
    """
    found: list[Path] = []
    level = [directory]
    for _ in range(depth):
        level = [sub for folder in level for sub in _subfolders(folder)]
        for folder in level:
            try:
                files = manifest_files(folder)
            except OSError:
                continue
            for path in files:
                try:
                    declares = _DECLARES_SUBSCRIPTION.search(path.read_text(errors="replace"))
                except OSError:
                    continue
                if declares:
                    found.append(folder)
                    break
            if len(found) >= limit:
                return found
    return found
