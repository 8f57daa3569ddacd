from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ispd.sdnotify import Notifier, watchdog_interval


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready("x") is False


def test_messages_reach_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        notifier = Notifier(str(path))
        assert notifier.ready("serving: metrics")
        assert notifier.reloading(123)
        assert notifier.stopping()
        got = [listener.recv(4096).decode() for _ in range(3)]
        notifier.close()
    assert got == ["READY=1\nSTATUS=serving: metrics", "RELOADING=1\nMONOTONIC_USEC=123", "STOPPING=1"]


def test_abstract_namespace_address() -> None:
    name = f"ispd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        notifier = Notifier("@" + name)
        assert notifier.watchdog()
        assert listener.recv(100) == b"WATCHDOG=1"
        notifier.close()


def test_vanished_listener_is_not_an_error(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "gone.sock")).ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None  # meant for another process
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval() is None
