"""Ports for listeners are picked outside the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from feedline.dev import ports

pytestmark = pytest.mark.unit


def test_the_ephemeral_range_is_read_from_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setting = tmp_path / "ip_local_port_range"
    setting.write_text("32768\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", setting)
    assert ports.ephemeral_range() == range(32768, 61000)
    assert ports.pickable(32767)
    assert ports.pickable(61000)
    assert not ports.pickable(32768)
    assert not ports.pickable(60999)
    assert not ports.pickable(8001)  # below the picked ports: the services' own defaults


def test_without_the_kernel_setting_iana_dynamic_ports_are_ephemeral(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", tmp_path / "absent")
    assert ports.ephemeral_range() == range(49152, 65536)


def test_free_ports_are_distinct_pickable_and_bindable() -> None:
    picked = ports.free_ports("127.0.0.1", [f"name {n}" for n in range(20)])
    assert len(set(picked.values())) == 20
    ephemeral = ports.ephemeral_range()
    assert all(ports.pickable(port, ephemeral) for port in picked.values()), picked
    for port in picked.values():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # released when picked: a server can bind it
        assert not ports.port_in_use("127.0.0.1", port)


def test_a_listening_port_is_in_use() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", ports.free_port()))
        server.listen()
        assert ports.port_in_use("127.0.0.1", server.getsockname()[1])
