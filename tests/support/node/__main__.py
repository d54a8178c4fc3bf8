"""`python -m tests.support.node up|down|status|check|push` (make node-up / node-down).

`up` starts `serve` in its own session and waits until the node is Ready, then
prints the kubeconfig path as its last line; `serve` holds the node's lock,
runs the node and tears it down on SIGTERM; `down` sends that SIGTERM (or, if
`serve` died, tears down from the recorded state) and checks that nothing was
left behind; `check` only checks; `push LOCAL_IMAGE IMAGE` pushes a podman image
so the node pulls it as IMAGE.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.node import host, images
from tests.support.node.layout import Layout
from tests.support.node.node import (
    Node,
    NodeError,
    NodeLock,
    NodeState,
    find_node_binaries,
    teardown,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def _say(message: str) -> None:
    print(f"node: {message}", file=sys.stderr, flush=True)


def serve(lay: Layout) -> int:
    lock = NodeLock()
    if not lock.try_acquire():
        _say("another node runs on this machine (lock held): `make node-down` first")
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node = Node(lay, owner="serve")
    try:
        node.start()
    except Exception as err:  # reported to `up` through serve.log
        _say(f"start failed: {err}")
        lock.release()
        return 1
    _say(f"ready in {node.state.start_seconds:.1f}s")
    while not stop.wait(1):
        pass
    began = time.monotonic()
    left = node.stop()
    lock.release()
    _say(f"stopped in {time.monotonic() - began:.1f}s")
    if left:
        _say("teardown left:\n  " + "\n  ".join(left))
        return 1
    return 0


def up(lay: Layout, timeout: float) -> int:
    state = NodeState.read(lay)
    if state and state.ready and state.owner_pid and host.pid_alive(state.owner_pid):
        _say(f"already running (pid {state.owner_pid})")
        print(lay.kubeconfig)
        return 0
    find_node_binaries()  # fail now, with how to build, not inside `serve`
    lay.logs.mkdir(parents=True, exist_ok=True)
    log_path = lay.logs / "serve.log"
    began = time.monotonic()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.node", "serve"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = began + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _say(f"failed (exit {proc.returncode}); {log_path}:")
            print(log_path.read_text(errors="replace")[-6000:], file=sys.stderr)
            return 1
        state = NodeState.read(lay)
        if state and state.ready and state.owner_pid == proc.pid:
            took = time.monotonic() - began
            _say(f"Ready in {took:.1f}s (serve pid {proc.pid}); logs in {lay.logs}")
            _say(f"export KUBECONFIG={lay.kubeconfig}")
            print(lay.kubeconfig)
            return 0
        time.sleep(0.2)
    _say(f"not Ready after {timeout:.0f}s; stopping it ({log_path})")
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return 1


def down(lay: Layout) -> int:
    state = NodeState.read(lay)
    tables_before = state.saved.get("nft-tables:") if state else None
    began = time.monotonic()
    if state and state.owner == "serve" and host.pid_alive(state.owner_pid):
        host.stop_pid(state.owner_pid, timeout=120)
        state = NodeState.read(lay)
    if state and (state.pids or state.saved):
        # Its owner is gone (killed): undo from the recorded state.
        _say("tearing down from the recorded state")
        try:
            binaries = find_node_binaries()
        except NodeError:
            binaries = None
        teardown(lay, state, binaries)
    left = host.leftovers(lay, nft_tables_before=tables_before)
    _say(f"down in {time.monotonic() - began:.1f}s")
    if left:
        _say("left behind:\n  " + "\n  ".join(left))
        return 1
    return 0


def status(lay: Layout) -> int:
    state = NodeState.read(lay)
    running = bool(state and state.ready and host.pid_alive(state.owner_pid))
    print(f"running: {running}")
    if state:
        print(f"owner: {state.owner} pid {state.owner_pid}; started in {state.start_seconds}s")
        print(f"kubeconfig: {lay.kubeconfig}")
    return 0 if running else 3


def check(lay: Layout) -> int:
    left = host.leftovers(lay)
    for item in left:
        print(item)
    return 1 if left else 0


def push(local_image: str, image: str) -> int:
    print(images.push(local_image, image))
    images.forget_cached(find_node_binaries()["crictl"], Layout.default().containerd_socket, image)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.node")
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start the node in the background; print the kubeconfig")
    up_parser.add_argument("--timeout", type=float, default=300)
    sub.add_parser("serve", help="run the node in the foreground until SIGTERM")
    sub.add_parser("down", help="stop the node; check nothing was left behind")
    sub.add_parser("status", help="is a node running (exit 3 if not)")
    sub.add_parser("check", help="list what a node left on this machine (exit 1 if anything)")
    push_parser = sub.add_parser("push", help="push a podman image to the node's registry")
    push_parser.add_argument("local_image")
    push_parser.add_argument("image", help="the name pods use (e.g. feedline:0.1.0)")
    args = parser.parse_args(argv)
    lay = Layout.default()
    commands = {
        "up": lambda: up(lay, args.timeout),
        "serve": lambda: serve(lay),
        "down": lambda: down(lay),
        "status": lambda: status(lay),
        "check": lambda: check(lay),
        "push": lambda: push(args.local_image, args.image),
    }
    try:
        return commands[args.command]()
    except (NodeError, images.ImageError) as err:
        _say(str(err))
        return 1


if __name__ == "__main__":
    sys.exit(main())
