"""Where the control-plane binaries are.

`tools/controlplane/build.sh --check` knows the versioned cache folder; the
fixtures never build (a cold build takes tens of minutes), they fail and say
how to build instead. `FEEDLINE_CONTROLPLANE_BIN` overrides the location.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "tools" / "controlplane" / "build.sh"
BIN_ENV = "FEEDLINE_CONTROLPLANE_BIN"
HOW_TO_BUILD = "run `make controlplane` (tools/controlplane/build.sh) to build them"


class MissingBinariesError(RuntimeError):
    """A binary the cluster tests need is not there."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    helm: Path


def _bin_dir() -> Path:
    override = os.environ.get(BIN_ENV)
    if override:
        return Path(override)
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MissingBinariesError(
            proc.stderr.strip() or f"control-plane binaries are not built: {HOW_TO_BUILD}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def find_binaries() -> Binaries:
    directory = _bin_dir()
    names = ["etcd", "kube-apiserver", "kube-controller-manager", "helm"]
    paths = {name: directory / name for name in names}
    missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
    if missing:
        raise MissingBinariesError(f"missing {', '.join(missing)}: {HOW_TO_BUILD}")
    return Binaries(
        etcd=paths["etcd"],
        kube_apiserver=paths["kube-apiserver"],
        kube_controller_manager=paths["kube-controller-manager"],
        helm=paths["helm"],
    )


def find_helm() -> Path:
    """helm alone: also needed when the tests run against an external cluster,
    where the control-plane binaries may not be built (then helm on PATH will do)."""
    try:
        return find_binaries().helm
    except MissingBinariesError:
        found = shutil.which("helm")
        if found:
            return Path(found)
        raise


def find_kubectl() -> Path:
    found = shutil.which("kubectl")
    if not found:
        raise MissingBinariesError("kubectl is not on PATH: install the kubectl client")
    return Path(found)
