"""Images the node needs without any registry: pause (from tools/node/pause.c)
and CoreDNS (the binary build.sh made), written as docker-archive tarballs for
`ctr images import`; and pushing podman-built images to the node's registry."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.node import layout
from tests.support.podman import podman_env

REPO_ROOT = Path(__file__).resolve().parents[3]
PAUSE_SOURCE = REPO_ROOT / "tools" / "node" / "pause.c"


class ImageError(RuntimeError):
    """An image could not be built, imported or pushed."""


def cache_dir() -> Path:
    base = Path(os.environ.get("FEEDLINE_CACHE_DIR", Path.home() / ".cache" / "feedline"))
    path = base / "node" / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ImageFile:
    """One file of a single-layer image."""

    path: str  # inside the image, without a leading slash
    data: bytes
    mode: int = 0o755


def write_docker_archive(
    target: Path,
    name: str,
    files: list[ImageFile],
    *,
    entrypoint: list[str],
    user: str = "",
) -> Path:
    """A `docker save`-format tarball of a one-layer linux/amd64 image."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in files:
            info = tarfile.TarInfo(item.path)
            info.size = len(item.data)
            info.mode = item.mode
            tar.addfile(info, io.BytesIO(item.data))
    layer_bytes = layer.getvalue()
    layer_digest = hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user, "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "tests/support/node/images.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [
        {"Config": config_name, "RepoTags": [name], "Layers": [f"{layer_digest}/layer.tar"]}
    ]
    members = {
        f"{layer_digest}/layer.tar": layer_bytes,
        config_name: config_bytes,
        "manifest.json": json.dumps(manifest).encode(),
    }
    tmp = target.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(target)
    return target


def pause_archive() -> Path:
    """The sandbox image, built once per pause.c content (gcc -static)."""
    source = PAUSE_SOURCE.read_bytes()
    target = cache_dir() / f"pause-{hashlib.sha256(source).hexdigest()[:12]}.tar"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        proc = subprocess.run(
            ["gcc", "-Os", "-static", "-o", str(binary), str(PAUSE_SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageError(
                f"gcc -static pause.c failed (apt-get install gcc libc6-dev):\n{proc.stderr}"
            )
        subprocess.run(["strip", str(binary)], check=False)
        data = binary.read_bytes()
    return write_docker_archive(
        target,
        layout.PAUSE_IMAGE,
        [ImageFile("pause", data)],
        entrypoint=["/pause"],
        user="65535:65535",
    )


def coredns_image(coredns_binary: Path) -> str:
    """The CoreDNS image's name, tagged by the binary's content."""
    digest = hashlib.sha256(coredns_binary.read_bytes()).hexdigest()[:12]
    return f"feedline.local/coredns:{digest}"


def coredns_archive(coredns_binary: Path) -> tuple[str, Path]:
    name = coredns_image(coredns_binary)
    target = cache_dir() / f"coredns-{name.rsplit(':', 1)[1]}.tar"
    if not target.exists():
        write_docker_archive(
            target,
            name,
            [ImageFile("coredns", coredns_binary.read_bytes())],
            entrypoint=["/coredns"],
        )
    return name, target


def ctr_import(ctr: Path, socket: Path, archive: Path) -> None:
    proc = subprocess.run(
        [
            str(ctr),
            "--address",
            str(socket),
            "--namespace",
            "k8s.io",
            "images",
            "import",
            "--local",
            str(archive),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(f"ctr images import {archive} failed:\n{proc.stdout}{proc.stderr}")


def registry_reference(image: str) -> str:
    """Where `image` must be pushed in the node's registry for containerd's
    mirror to serve it under that name (docker.io/library/... for short names)."""
    first, _, rest = image.partition("/")
    if not rest:
        path = f"library/{image}"
    elif "." in first or ":" in first or first == "localhost":
        path = rest
    else:
        path = image
    return f"{layout.REGISTRY}/{path}"


def push(local_image: str, image: str) -> str:
    """Push a podman image so the node pulls it as `image`; the registry reference."""
    reference = registry_reference(image)
    proc = subprocess.run(
        ["podman", "push", "--quiet", "--tls-verify=false", local_image, reference],
        capture_output=True,
        text=True,
        env=podman_env(),
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise ImageError(f"podman push {local_image} {reference} failed:\n{proc.stderr}")
    return reference


def forget_cached(crictl: Path, socket: Path, image: str) -> None:
    """Drop the node's copy of ``image`` (if it has one and runs): pods made
    after a rebuild pull the new one, where the charts' IfNotPresent would
    keep the old. Running containers keep theirs."""
    if not socket.exists():
        return
    subprocess.run(
        [str(crictl), "--runtime-endpoint", f"unix://{socket}", "rmi", qualified(image)],
        capture_output=True,
        check=False,
        timeout=60,
    )


def qualified(image: str) -> str:
    """The name containerd stores ``image`` under (docker.io/library/... for short names)."""
    first, _, rest = image.partition("/")
    if not rest:
        return f"docker.io/library/{image}"
    if "." in first or ":" in first or first == "localhost":
        return image
    return f"docker.io/{image}"
