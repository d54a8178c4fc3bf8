"""At load: every database URL a subscription reads from a Secret is one Feedline accepts.

The read model's DSN (``spec.readModel.databaseSecretRef``) is only used by
the subscriber, at its first run; a bad one would then show up as a run that
ended with "exit code 2 and no summary". `feedline dev` checks each one before anything
starts, as the subscriber will (``feedline_contracts.database.parse_database_url``),
after the ``$(FEEDLINE_DEV_STATE_DIR)``/``$(FEEDLINE_DEV_DIR)`` expansion, and
names the Secret's file, the Secret, the key and what is accepted. A SQLite
file's folder must exist (or be the state directory, which `feedline dev`
creates); a relative path is relative to the folder, where subscribers run.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from feedline.dev.manifests import Folder, ManifestError, Secret
from feedline.dev.plan import Layout, expand, secret_variables
from feedline.dev.schema import Problem
from feedline_contracts.database import (
    ACCEPTED_URLS,
    DatabaseUrlError,
    parse_database_url,
    redacted,
)


def _problem(value: str, layout: Layout) -> str | None:
    """What is wrong with a DSN (the password hidden), or None."""
    try:
        parsed = parse_database_url(value)
    except DatabaseUrlError as exc:
        try:
            password = make_url(value).password
        except ArgumentError:
            return f"not a database URL: expected {ACCEPTED_URLS}"
        return (
            str(exc) if password is None else str(exc).replace(repr(value), repr(redacted(value)))
        )
    if parsed.dialect == "sqlite":
        # The subscriber runs in the folder: a relative path is relative to it.
        folder = (layout.directory / (parsed.sqlalchemy_url.database or "")).parent.resolve()
        if folder != layout.state_dir and not folder.is_dir():
            return (
                f"{redacted(value)!r}: the folder {folder} of the SQLite file does not exist "
                f"(feedline dev creates only the state directory, $(FEEDLINE_DEV_STATE_DIR)); "
                f"expected {ACCEPTED_URLS}"
            )
    return None


def dsn_errors(folder: Folder, layout: Layout) -> list[ManifestError]:
    """One error per Secret key holding a read model's DSN that the subscriber would refuse."""
    users: dict[tuple[str, str, str], list[str]] = {}
    for loaded in folder.subscriptions:
        sub = loaded.subscription
        ref = sub.spec.read_model.database_secret_ref
        users.setdefault((sub.namespace, ref.name, ref.key), []).append(sub.name)
    errors = []
    variables = secret_variables(layout)
    for (namespace, name, key), subscriptions in users.items():
        secret: Secret | None = folder.secrets.get((namespace, name))
        if secret is None or key not in secret.data:
            continue  # reported by manifests.reference_errors
        problem = _problem(expand(secret.data[key], variables), layout)
        if problem is None:
            continue
        used_by = ", ".join(f'"{s}"' for s in subscriptions)
        errors.append(
            ManifestError(
                secret.source,
                f'Secret "{name}"',
                [
                    Problem(
                        secret.field_of(key),
                        "FieldValueInvalid",
                        f"{problem} (the read-model database of EventSubscription {used_by}, "
                        "spec.readModel.databaseSecretRef)",
                    )
                ],
            )
        )
    return errors
