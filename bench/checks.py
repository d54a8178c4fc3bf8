"""The benchmarks' correctness checks, and how they report their conditions.

Each check returns the problems it found (an empty list when all is well);
``require`` turns problems into ``CheckError``, and each benchmark's command
line turns ``CheckError`` into a message on stderr and exit status 1. A figure
from a run that did not do what it claims is not a figure.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# How many offending names or numbers a message lists before "...".
SHOWN = 5

CHECK_FAILED_EXIT = 1


class CheckError(Exception):
    """A benchmark's correctness check failed: its figures must not be reported."""


def require(what: str, problems: Sequence[str]) -> None:
    if problems:
        raise CheckError(f"{what}: " + "; ".join(problems))


def fail_and_exit(program: str, failure: CheckError) -> None:
    print(f"{program}: CHECK FAILED: {failure}", file=sys.stderr, flush=True)
    sys.exit(CHECK_FAILED_EXIT)


def _some(values: Iterable[object]) -> str:
    listed = sorted(values, key=str)
    shown = ", ".join(str(value) for value in listed[:SHOWN])
    return shown + (f", ... ({len(listed)} in all)" if len(listed) > SHOWN else "")


def count_problems(what: str, actual: int, expected: int) -> list[str]:
    if actual == expected:
        return []
    return [f"{what}: {actual:,}, expected {expected:,}"]


def read_model_problems(
    rows: Iterable[tuple[int, str, int]], expected: int, description: Callable[[int], str]
) -> list[str]:
    """The read model after ``expected`` distinct SpecialOfferCreated events.

    Offer n was created by the event at sequence n, so the rows must be exactly
    ``(n, description(n), n)`` for n in 1..expected: that many rows, no offer
    twice, none missing, none extra, each with its own description and position.
    """
    rows = list(rows)
    problems = count_problems("rows", len(rows), expected)
    counts = Counter(offer for offer, _, _ in rows)
    duplicated = {offer for offer, seen in counts.items() if seen > 1}
    if duplicated:
        problems.append(f"{len(duplicated):,} offers in more than one row: {_some(duplicated)}")
    wanted = range(1, expected + 1)
    missing = set(wanted).difference(counts)
    if missing:
        problems.append(f"{len(missing):,} offers missing: {_some(missing)}")
    extra = {offer for offer in counts if offer not in wanted}
    if extra:
        problems.append(f"{len(extra):,} unexpected offers: {_some(extra)}")
    wrong = {
        offer
        for offer, text, position in rows
        if offer in wanted and (text != description(offer) or position != offer)
    }
    if wrong:
        problems.append(
            f"{len(wrong):,} rows with the wrong description or last_sequence_number: "
            f"{_some(wrong)}"
        )
    return problems


def sequence_problems(numbers: Sequence[int], expected: int) -> list[str]:
    """Messages read back from a stream: exactly sequence numbers 1..expected, in order.

    No number twice, none missing, none extra, none out of order (the relay's
    guarantee, and the broker's deduplication's).
    """
    problems = count_problems("messages", len(numbers), expected)
    counts = Counter(numbers)
    duplicated = {number for number, seen in counts.items() if seen > 1}
    if duplicated:
        problems.append(f"{len(duplicated):,} sequence numbers more than once: {_some(duplicated)}")
    wanted = range(1, expected + 1)
    missing = set(wanted).difference(counts)
    if missing:
        problems.append(f"{len(missing):,} sequence numbers missing: {_some(missing)}")
    extra = {number for number in counts if number not in wanted}
    if extra:
        problems.append(f"{len(extra):,} unexpected sequence numbers: {_some(extra)}")
    disorder = next((i for i in range(1, len(numbers)) if numbers[i] <= numbers[i - 1]), None)
    if disorder is not None:
        problems.append(
            f"out of order at message {disorder + 1:,}: "
            f"{numbers[disorder]} after {numbers[disorder - 1]}"
        )
    return problems


@dataclass(frozen=True)
class Subscription:
    """An EventSubscription as the benchmark lists it at the end."""

    name: str
    uid: str
    ready: bool


@dataclass(frozen=True)
class Child:
    """A CronJob or Deployment in the benchmark's namespace."""

    kind: str
    name: str
    # uids named by its ownerReferences with controller=True and kind EventSubscription
    controller_uids: tuple[str, ...]


def operator_problems(
    expected: int, subscriptions: Sequence[Subscription], children: Sequence[Child]
) -> list[str]:
    """After ``expected`` CronJob-mode EventSubscriptions were created.

    Exactly ``expected`` subscriptions, all Ready=True; exactly ``expected``
    CronJobs and no Deployments; each CronJob controlled by exactly one of the
    subscriptions, and each subscription controlling exactly one CronJob.
    """
    problems = count_problems("EventSubscriptions", len(subscriptions), expected)
    not_ready = [s.name for s in subscriptions if not s.ready]
    if not_ready:
        problems.append(f"{len(not_ready):,} not Ready=True: {_some(not_ready)}")
    cronjobs = [child for child in children if child.kind == "CronJob"]
    others = [f"{child.kind}/{child.name}" for child in children if child.kind != "CronJob"]
    problems += count_problems("CronJobs", len(cronjobs), expected)
    if others:
        problems.append(f"{len(others):,} children that are not CronJobs: {_some(others)}")
    names = Counter(child.name for child in cronjobs)
    repeated = [name for name, seen in names.items() if seen > 1]
    if repeated:
        problems.append(f"CronJob names listed more than once: {_some(repeated)}")
    by_uid = {s.uid: s.name for s in subscriptions}
    owned: Counter[str] = Counter()
    unowned: list[str] = []
    for child in cronjobs:
        owners = [uid for uid in child.controller_uids if uid in by_uid]
        if len(owners) != 1 or len(child.controller_uids) != 1:
            unowned.append(child.name)
        owned.update(owners)
    if unowned:
        problems.append(
            f"{len(unowned):,} CronJobs not controlled by exactly one of the subscriptions: "
            f"{_some(unowned)}"
        )
    duplicated = [by_uid[uid] for uid, seen in owned.items() if seen > 1]
    if duplicated:
        problems.append(
            f"{len(duplicated):,} subscriptions controlling more than one CronJob: "
            f"{_some(duplicated)}"
        )
    childless = [s.name for s in subscriptions if owned[s.uid] == 0]
    if childless:
        problems.append(f"{len(childless):,} subscriptions without a CronJob: {_some(childless)}")
    return problems


def percentile(values: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile: the smallest value with ``percent`` % of them at or below.

    Of 20 values p95 is the 19th smallest and p99 the largest: no interpolation,
    so each figure is one that was measured.
    """
    if not values:
        raise ValueError("no values")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], not {percent}")
    ordered = sorted(values)
    rank = math.ceil(percent * len(ordered) / 100)
    return ordered[max(rank, 1) - 1]


def significant(value: float, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, trailing zeros kept (0.2500, not 0.25)."""
    return f"{value:#.{digits}g}".rstrip(".")


def plain(value: float) -> str:
    """``value`` with thousands separators and at least 5 significant digits (counts: whole)."""
    if float(value).is_integer():
        return f"{int(value):,}"
    whole = len(str(int(abs(value))))
    return f"{value:,.{max(0, 5 - whole)}f}"


def ratio(numerator: float, denominator: float) -> str:
    """A ratio to 4 significant digits, with the figures it comes from."""
    return f"{significant(numerator / denominator)} = {plain(numerator)} / {plain(denominator)}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cores() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    total = os.cpu_count()
    if usable is not None and usable != total:
        return f"{usable} usable of {total}"
    return str(total)


def filesystem_of(path: Path) -> str:
    """The type and mount point of the file system holding ``path``, from /proc/mounts."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown file system"
    resolved = str(path.resolve())
    best: tuple[str, str] | None = None
    for fields in mounts:
        if len(fields) < 3:
            continue
        mount_point, kind = fields[1], fields[2]
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) >= len(best[0])):
            best = (mount_point, kind)
    return f"{best[1]} (mounted at {best[0]})" if best else "unknown file system"


def final_rows_problems(
    rows: Iterable[tuple[int, str, int]], expected: Mapping[int, tuple[str, int]]
) -> list[str]:
    """A read model against the rows it must end with: ``offer -> (description, position)``.

    For feeds whose rows are not simply ``(n, description(n), n)`` (updates of
    the same offers, a type filter): exactly the expected offers, each once,
    each with the description and last_sequence_number of its last event.
    """
    rows = list(rows)
    problems = count_problems("rows", len(rows), len(expected))
    counts = Counter(offer for offer, _, _ in rows)
    duplicated = {offer for offer, seen in counts.items() if seen > 1}
    if duplicated:
        problems.append(f"{len(duplicated):,} offers in more than one row: {_some(duplicated)}")
    missing = set(expected).difference(counts)
    if missing:
        problems.append(f"{len(missing):,} offers missing: {_some(missing)}")
    extra = {offer for offer in counts if offer not in expected}
    if extra:
        problems.append(f"{len(extra):,} unexpected offers: {_some(extra)}")
    wrong = {
        offer
        for offer, text, position in rows
        if offer in expected and expected[offer] != (text, position)
    }
    if wrong:
        problems.append(
            f"{len(wrong):,} rows with the wrong description or last_sequence_number: "
            f"{_some(wrong)}"
        )
    return problems


# kube-apiserver's requests, from its /metrics: (verb, resource[/subresource]).
RequestKey = tuple[str, str]
NON_RESOURCE = "(non-resource)"
# apiserver_request_total's verbs that change something (POST is a create, PUT an update).
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
_REQUEST_SAMPLE = "apiserver_request_total{"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def apiserver_requests(metrics: str) -> dict[RequestKey, float]:
    """kube-apiserver's ``apiserver_request_total`` counters by verb and resource.

    Summed over the other labels (code, group, version, scope, component,
    dry_run); a non-resource request (``/metrics``, ``/readyz``) counts under
    ``(non-resource)``.
    """
    counts: dict[RequestKey, float] = {}
    for line in metrics.splitlines():
        if not line.startswith(_REQUEST_SAMPLE):
            continue
        labels_text, _, rest = line[len(_REQUEST_SAMPLE) :].rpartition("}")
        labels = dict(_LABEL.findall(labels_text))
        resource = labels.get("resource", "")
        subresource = labels.get("subresource", "")
        if not resource:
            resource = NON_RESOURCE
        elif subresource:
            resource = f"{resource}/{subresource}"
        key = (labels.get("verb", ""), resource)
        counts[key] = counts.get(key, 0.0) + float(rest.split()[0])
    return counts


def request_delta(
    before: Mapping[RequestKey, float], after: Mapping[RequestKey, float]
) -> dict[RequestKey, float]:
    """``after - before`` per key, keys whose difference is 0 left out."""
    keys = set(before) | set(after)
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in keys}
    return {key: value for key, value in delta.items() if value}


def resync_read_problems(
    requests: Mapping[RequestKey, float],
    resources: Iterable[str],
    objects_times_periods: float,
    allowed_per_object: float = 0.01,
) -> list[str]:
    """GETs among ``requests`` (a window's, the baseline subtracted) of ``resources``
    that a watch-fed cache should have answered.

    ``allowed_per_object`` leaves room for the rare GET that confirms a stale copy
    (a 409 retried); a resync that reads each object's children from the API
    sends one GET per object per resource, a hundred times more.
    """
    allowed = allowed_per_object * objects_times_periods
    return [
        f"{plain(count)} GET {resource} in a resync of {plain(objects_times_periods)} "
        f"objects (at most {plain(allowed)}: the watch cache answers those)"
        for resource in resources
        if (count := requests.get(("GET", resource), 0.0)) > allowed
    ]


def resync_write_problems(
    requests: Mapping[RequestKey, float], resources: Iterable[str]
) -> list[str]:
    """Writes among ``requests`` (a window's, the baseline subtracted) to ``resources``.

    A resource matches with its subresources (``eventsubscriptions`` covers
    ``eventsubscriptions/status``). For a window in which nothing changed:
    each write found is a problem.
    """
    watched = tuple(resources)
    found = {
        (verb, resource): count
        for (verb, resource), count in requests.items()
        if verb in WRITE_VERBS
        and count > 0
        and any(resource == r or resource.startswith(f"{r}/") for r in watched)
    }
    return [
        f"{plain(count)} {verb} {resource} while nothing changed"
        for (verb, resource), count in sorted(found.items(), key=lambda item: item[0])
    ]
