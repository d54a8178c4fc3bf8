"""`feedline new-service NAME`: a new service on the chassis, from its first commit.

The templates (``template/``, shipped in the wheel) are rendered with
:class:`string.Template` (``${name}``, ``${package}``, ...; ``$$`` for a
dollar sign): the files are plain Python, YAML and TOML that read as what they
become. A path segment ``PACKAGE`` becomes the Python package's name and the
``.tmpl`` suffix is dropped.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

TEMPLATE_SUFFIX = ".tmpl"
PACKAGE_SEGMENT = "PACKAGE"
# A service's name is a DNS label (its Service, its stream and its objects are named
# after it), starting with a letter so that it also makes a Python package name.
_NAME = re.compile(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?")
NAME_RULE = (
    "a lowercase DNS label of at most 40 characters starting with a letter "
    "(letters, digits and '-'), e.g. gift-cards"
)


class ScaffoldError(ValueError):
    """The service cannot be scaffolded as asked; the message says why and what is accepted."""


@dataclass(frozen=True)
class ServiceNames:
    name: str  # gift-cards: the service, its chart release, its objects
    package: str  # gift_cards: the Python package


def service_names(name: str) -> ServiceNames:
    """The names a service is known by; ScaffoldError when NAME cannot be one."""
    if not _NAME.fullmatch(name):
        raise ScaffoldError(f"NAME {name!r:.60} is not a service name: use {NAME_RULE}")
    package = name.replace("-", "_")
    if keyword.iskeyword(package) or importlib.util.find_spec(package) is not None:
        # A package of that name is already importable (the standard library's json,
        # an installed distribution, ...): the new one would shadow it or be shadowed.
        raise ScaffoldError(
            f"NAME {name!r}: a Python module named {package!r} already exists here; "
            "choose another name"
        )
    return ServiceNames(name=name, package=package)


def _installed(distribution: str, fallback: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return fallback


def _template_files(folder: Traversable, relative: Path) -> list[tuple[Path, Traversable]]:
    found: list[tuple[Path, Traversable]] = []
    for entry in sorted(folder.iterdir(), key=lambda each: each.name):
        if entry.is_dir():
            if entry.name != "__pycache__":
                found += _template_files(entry, relative / entry.name)
        elif entry.name.endswith(TEMPLATE_SUFFIX):
            found.append((relative / entry.name.removesuffix(TEMPLATE_SUFFIX), entry))
    return found


def create_service(name: str, parent: Path) -> list[Path]:
    """Write the service NAME into ``parent/NAME``; the files written, relative to it.

    Refuses (ScaffoldError) a bad name or a folder that already exists: nothing
    is overwritten.
    """
    names = service_names(name)
    target = parent / name
    if target.exists():
        raise ScaffoldError(f"{target} already exists: choose another NAME or --directory")
    values = {
        "name": names.name,
        "package": names.package,
        "feedline_version": _installed("feedline", "0.1.0"),
        "pytest_version": _installed("pytest", "9.2.0"),
        "pytest_asyncio_version": _installed("pytest-asyncio", "1.5.0"),
    }
    written = []
    for relative, template in _template_files(files(__package__) / "template", Path()):
        parts = (names.package if part == PACKAGE_SEGMENT else part for part in relative.parts)
        path = Path(*parts)
        text = Template(template.read_text(encoding="utf-8")).substitute(values)
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(text, encoding="utf-8")
        written.append(path)
    return written
