"""A NAS's Dynamic Authorization Server (RFC 5176) for the tests: it listens on a UDP port,
checks each Disconnect-Request or CoA-Request as a NAS would (Request Authenticator and
Message-Authenticator against the shared secret), records it, and answers ACK — or NAK, or
nothing, as the test asks. It is written from the RFCs with hashlib alone, so that it checks
ispd's packets independently of ispd's own codec.

    with FakeNas("127.0.0.1", secret=b"testing123") as nas:
        ...  # point the [[radius.client]] coa_port at nas.port
        nas.wait_for(1)
        nas.requests[0].attributes[44]  # Acct-Session-Id
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import socket
import threading
import time
from dataclasses import dataclass, field

DISCONNECT_REQUEST, DISCONNECT_ACK, DISCONNECT_NAK = 40, 41, 42
COA_REQUEST, COA_ACK, COA_NAK = 43, 44, 45
MESSAGE_AUTHENTICATOR = 80
ERROR_CAUSE = 101


@dataclass
class DASRequest:
    code: int
    identifier: int
    attributes: dict[int, list[bytes]] = field(default_factory=dict)
    authentic: bool = False  # the Request Authenticator and Message-Authenticator both checked out
    raw: bytes = b""
    source: tuple[str, int] | None = None  # where it came from

    def first(self, attribute: int) -> bytes | None:
        values = self.attributes.get(attribute)
        return values[0] if values else None


def _attributes(data: bytes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    offset = 20
    while offset + 2 <= len(data):
        length = data[offset + 1]
        if length < 2:
            break
        out.setdefault(data[offset], []).append(data[offset + 2:offset + length])
        offset += length
    return out


def _authentic(data: bytes, secret: bytes) -> bool:
    zeroed = data[:4] + bytes(16) + data[20:]
    if hmac.compare_digest(hashlib.md5(zeroed + secret).digest(), data[4:20]) is False:
        return False
    offset = 20
    while offset + 2 <= len(data):
        kind, length = data[offset], data[offset + 1]
        if length < 2:
            return False
        if kind == MESSAGE_AUTHENTICATOR:
            signed = zeroed[:offset + 2] + bytes(16) + zeroed[offset + 18:]
            return hmac.compare_digest(hmac.digest(secret, signed, "md5"), data[offset + 2:offset + 18])
        offset += length
    return True  # RFC 5176 allows requests without one; the tests assert ispd sends it


def socket_in_netns(netns: str, family: int, kind: int) -> socket.socket:
    """A socket that belongs to network namespace ``netns`` (as ``ip netns exec`` would give): a
    short-lived thread enters it (setns affects only the calling thread) and makes the socket,
    which keeps its namespace for its whole life, whichever thread uses it."""
    made: list[socket.socket | BaseException] = []

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


CLONE_NEWNET = 0x40000000


class FakeNas:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, secret: bytes = b"testing123",
                 answer: str = "ack", error_cause: int = 504, netns: str | None = None) -> None:
        self.secret = secret
        self.answer = answer  # ack | nak | silent
        self.error_cause = error_cause  # for NAKs; 504 Session-Context-Not-Removable (it has it still)
        self.requests: list[DASRequest] = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = (socket_in_netns(netns, family, socket.SOCK_DGRAM) if netns is not None
                      else socket.socket(family, socket.SOCK_DGRAM))
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeNas:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[DASRequest]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake NAS got {len(self.requests)} requests, expected {count}")
            time.sleep(0.05)
        return self.requests

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 20 or data[0] not in (DISCONNECT_REQUEST, COA_REQUEST):
                continue
            request = DASRequest(data[0], data[1], _attributes(data), _authentic(data, self.secret), data, peer[:2])
            self.requests.append(request)
            if self.answer == "silent" or not request.authentic:
                continue
            code = data[0] + (1 if self.answer == "ack" else 2)
            attributes = b""
            if self.answer == "nak":
                attributes = bytes((ERROR_CAUSE, 6)) + self.error_cause.to_bytes(4, "big")
            length = 20 + len(attributes)
            head = bytes((code, data[1])) + length.to_bytes(2, "big")
            authenticator = hashlib.md5(head + data[4:20] + attributes + self.secret).digest()
            self._sock.sendto(head + authenticator + attributes, peer)
