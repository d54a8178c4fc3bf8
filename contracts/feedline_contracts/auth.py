"""Feed auth: one vocabulary for the CRD, flags, environment variables and docs.

The names are the EventSubscription's `spec.feed.auth.type` values. Flags and
environment variables accept them in any letter case (`none` = `None`).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Final

from pydantic import BeforeValidator


class FeedAuth(StrEnum):
    NONE = "None"  # no token: local use
    TOKEN = "Token"  # a static bearer token, from a Secret
    SERVICE_ACCOUNT_TOKEN = "ServiceAccountToken"  # a projected token, checked by TokenReview

    @classmethod
    def _missing_(cls, value: object) -> FeedAuth | None:
        if isinstance(value, str):
            for member in cls:
                if member.value.lower() == value.lower():
                    return member
        return None


ACCEPTED: Final = ", ".join(member.value for member in FeedAuth)

# Names the ServiceAccountToken mode had before there was one vocabulary (the
# service said `kubernetes`, the subscriber `serviceaccount`): refused, with
# the name to use instead, rather than read as something else.
OLD_NAMES: Final = {
    "kubernetes": FeedAuth.SERVICE_ACCOUNT_TOKEN,
    "serviceaccount": FeedAuth.SERVICE_ACCOUNT_TOKEN,
}


def refuse_old_names(value: str) -> str:
    """``value`` stripped, for a FeedAuth field; a ValueError if it is an old name."""
    word = value.strip()
    new = OLD_NAMES.get(word.lower())
    if new is not None:
        raise ValueError(
            f"{word!r} is an old name: use {new.value} (accepted: {ACCEPTED}, in any letter case)"
        )
    return word


def _refuse_old_names(value: object) -> object:
    return refuse_old_names(value) if isinstance(value, str) else value


# A settings field holding the auth mode: the names above in any letter case;
# the old names are refused with the one to use (pydantic names the field).
FeedAuthSetting = Annotated[FeedAuth, BeforeValidator(_refuse_old_names)]


# The audience a projected ServiceAccount token is issued for and checked against.
TOKEN_AUDIENCE: Final = "feedline"


# Who may read a feed in ServiceAccountToken mode (docs/feed-protocol.md, "Authorisation"):
# comma-separated names as a TokenReview reports them. The service chart renders it from
# feedAuth.readers; unset or empty, every reader the TokenReview authenticates.
READERS_SETTING: Final = "FEEDLINE_FEED_READERS"
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
READER_PATTERN = re.compile(
    rf"system:serviceaccount:{_LABEL}:{_SUBDOMAIN}|system:serviceaccounts:{_LABEL}"
)
READER_FORMS = (
    "system:serviceaccount:NAMESPACE:NAME (one ServiceAccount) or "
    "system:serviceaccounts:NAMESPACE (every ServiceAccount of a namespace)"
)


def reader_problem(reader: str) -> str | None:
    """What is wrong with one entry of the readers' list; None when it is usable."""
    if READER_PATTERN.fullmatch(reader):
        return None
    return f"{reader!r:.120} is not a reader: use {READER_FORMS}"
