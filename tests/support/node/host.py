"""What a node changes on the machine, how to undo it, and a check that a
teardown left nothing behind: links, iptables rules, mounts, cgroups, processes."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tests.support.node import layout
from tests.support.node.layout import Layout

CGROUP_ROOT = Path("/sys/fs/cgroup")
# kubelet makes these even with --root-dir elsewhere; removed only if a node made them.
KUBELET_SIDE_DIRS = (Path("/var/log/containers"), Path("/var/log/pods"), Path("/var/lib/kubelet"))
_OUR_CHAIN = re.compile(r"^KUBE-")
_CNI_CHAIN = re.compile(r"^CNI-")
_CNI_COMMENT = f'name: \\"{layout.CNI_NETWORK}\\"'


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


# --- preparing -------------------------------------------------------------


def prepare(lay: Layout) -> dict[str, str]:
    """The node address on an empty bridge, forwarding on; the sysctl values it
    replaced (to restore) and which kubelet side directories it will create."""
    saved: dict[str, str] = {}
    if _run(["ip", "link", "show", layout.HOST_LINK]).returncode != 0:
        for argv in (
            ["ip", "link", "add", layout.HOST_LINK, "type", "bridge"],
            ["ip", "addr", "add", f"{layout.NODE_IP}/32", "dev", layout.HOST_LINK],
            ["ip", "link", "set", layout.HOST_LINK, "up"],
        ):
            proc = _run(argv)
            if proc.returncode != 0:
                raise RuntimeError(f"{shlex.join(argv)} failed: {proc.stderr.strip()}")
    for name in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
        path = _sysctl_path(name)
        if not path.exists() and name.startswith("net.bridge"):
            _run(["modprobe", "br_netfilter"])
        saved[f"sysctl:{name}"] = path.read_text().strip()
        path.write_text("1\n")
    for directory in KUBELET_SIDE_DIRS:
        if not directory.exists():
            saved[f"created:{directory}"] = "1"
    # kubelet and kube-proxy create iptables tables (through iptables-nft) that
    # stay, empty, after their rules are gone: remember which existed.
    saved["nft-tables:"] = ",".join(sorted(nft_tables()))
    for directory in (lay.run, lay.logs, lay.cni_conf, lay.cni_ipam, lay.registry_storage):
        directory.mkdir(parents=True, exist_ok=True)
    return saved


# --- undoing -----------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def runs_binary_from(pid: int, directories: tuple[str, ...]) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return any(exe.startswith(f"{d.rstrip('/')}/") for d in directories)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` (for processes we started)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def shim_pids(lay: Layout) -> list[int]:
    """containerd-shim-runc-v2 processes of this node's containerd (they outlive it):
    their command line names our containerd socket."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"containerd-shim-runc-v2")
            and (str(lay.containerd_socket).encode() in argv)
        ):
            found.append(int(entry.name))
    return found


def our_mounts(lay: Layout) -> list[str]:
    prefixes = (str(lay.data) + "/", str(lay.run) + "/", str(lay.run))
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        side = any(point.startswith(f"{d}/") for d in KUBELET_SIDE_DIRS)
        if side or point.startswith((*prefixes, "/run/netns/cni-")):
            points.append(point)
    return points


def unmount_all(lay: Layout) -> None:
    for point in sorted(our_mounts(lay), key=len, reverse=True):
        _run(["umount", "-l", point])


def kubepods_cgroups() -> list[Path]:
    return [p for p in CGROUP_ROOT.glob("*/kubepods") if p.is_dir()] + (
        [CGROUP_ROOT / "kubepods"] if (CGROUP_ROOT / "kubepods").is_dir() else []
    )


def remove_cgroups(timeout: float = 10.0) -> None:
    """rmdir kubelet's cgroup trees, deepest first. A task that is still dying
    keeps its directory busy for a moment: retry every controller until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        tops = kubepods_cgroups()
        for top in tops:
            for root, _dirs, _files in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(root)
        if not kubepods_cgroups() or time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def _iptables_dump(tool: str) -> list[str]:
    proc = _run([f"{tool}-save"])
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def _ours(chain: str, cni_chains: set[str]) -> bool:
    return bool(_OUR_CHAIN.match(chain)) or chain in cni_chains


def _our_cni_chains(lines: Iterable[str]) -> set[str]:
    """CNI-<hash> chains of our network: their rules carry our network's name."""
    chains = set()
    for line in lines:
        if line.startswith("-A ") and _CNI_COMMENT in line:
            args = shlex.split(line)
            if _CNI_CHAIN.match(args[1]):
                chains.add(args[1])
            if "-j" in args and _CNI_CHAIN.match(args[args.index("-j") + 1]):
                chains.add(args[args.index("-j") + 1])
    return chains


def iptables_leftovers() -> list[str]:
    left = []
    for tool in ("iptables", "ip6tables"):
        lines = _iptables_dump(tool)
        cni = _our_cni_chains(lines)
        for line in lines:
            if line.startswith((":", "-A ")):
                words = shlex.split(line.lstrip(":"))
                chain = words[1] if line.startswith("-A ") else words[0]
                target = words[words.index("-j") + 1] if "-j" in words else ""
                if _ours(chain, cni) or _ours(target, cni):
                    left.append(f"{tool}: {line}")
    return left


def clean_iptables() -> None:
    """Delete KUBE-* chains, our CNI-* chains, and the rules that jump to them;
    other users' rules (NETAVARK-*, another network's CNI-*) stay."""
    for tool in ("iptables", "ip6tables"):
        lines = _iptables_dump(tool)
        cni = _our_cni_chains(lines)
        table = ""
        jumps: list[tuple[str, list[str]]] = []
        chains: dict[str, list[str]] = {}
        for line in lines:
            if line.startswith("*"):
                table = line[1:]
                chains.setdefault(table, [])
            elif line.startswith(":"):
                name = line[1:].split()[0]
                if _ours(name, cni):
                    chains[table].append(name)
            elif line.startswith("-A "):
                args = shlex.split(line)
                target = args[args.index("-j") + 1] if "-j" in args else ""
                if not _ours(args[1], cni) and _ours(target, cni):
                    jumps.append((table, args[1:]))
        for table, args in jumps:
            _run([tool, "-w", "-t", table, "-D", *args])
        for table, names in chains.items():
            for name in names:
                _run([tool, "-w", "-t", table, "-F", name])
            for name in names:
                _run([tool, "-w", "-t", table, "-X", name])


def nft_tables() -> set[str]:
    """`family name` of every nftables table (empty if nft is not installed)."""
    try:
        proc = _run(["nft", "list", "tables"])
    except FileNotFoundError:
        return set()
    return {line.removeprefix("table ").strip() for line in proc.stdout.splitlines() if line}


def _has_rules(table: str) -> bool:
    listing = _run(["nft", "list", "table", *table.split()]).stdout
    for line in listing.splitlines():
        word = line.strip().split(" ", 1)[0]
        if word and word not in {"table", "chain", "type", "policy", "}", "#"}:
            return True
    return False


def new_nft_tables(before: str) -> list[str]:
    """Tables a node created (not in `before`, the saved list) that hold no rules."""
    known = set(before.split(",")) if before else set()
    return sorted(t for t in nft_tables() - known if not _has_rules(t))


def remove_links() -> None:
    for link in (layout.POD_BRIDGE, layout.HOST_LINK):
        _run(["ip", "link", "del", link])


def restore(saved: dict[str, str]) -> None:
    for key, value in saved.items():
        kind, _, name = key.partition(":")
        if kind == "sysctl":
            with contextlib.suppress(OSError):
                _sysctl_path(name).write_text(f"{value}\n")
        elif kind == "created":
            shutil.rmtree(name, ignore_errors=True)
        elif kind == "nft-tables":
            for table in new_nft_tables(value):
                _run(["nft", "delete", "table", *table.split()])


def remove_state(lay: Layout) -> None:
    for directory in lay.state_dirs():
        shutil.rmtree(directory, ignore_errors=True)


# --- checking ------------------------------------------------------------------


def leftovers(
    lay: Layout, pids: Iterable[int] = (), nft_tables_before: str | None = None
) -> list[str]:
    """Everything a node left on the machine; empty after a clean teardown.
    `nft_tables_before`: the tables that existed before it started (see prepare)."""
    found = [f"process {pid} still running" for pid in pids if pid_alive(pid)]
    found += [f"shim {pid} still running" for pid in shim_pids(lay)]
    for link in (layout.HOST_LINK, layout.POD_BRIDGE):
        if _run(["ip", "link", "show", link]).returncode == 0:
            found.append(f"link {link}")
    veths = _run(["ip", "-o", "link", "show", "master", layout.POD_BRIDGE])
    found += [f"link {line.split(':')[1].strip()}" for line in veths.stdout.splitlines()]
    found += [f"mount {point}" for point in our_mounts(lay)]
    found += [f"cgroup {path}" for path in kubepods_cgroups()]
    found += iptables_leftovers()
    found += [f"nft table {t}" for t in sorted(nft_tables()) if "kube-proxy" in t]
    if nft_tables_before is not None:
        found += [f"nft table {t} (made by the node)" for t in new_nft_tables(nft_tables_before)]
    addresses = _run(["ip", "-o", "addr", "show"]).stdout
    if f" {layout.NODE_IP}/" in addresses:
        found.append(f"address {layout.NODE_IP}")
    return found
