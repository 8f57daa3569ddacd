"""Another domain's MX for the tests (aiosmtpd in a thread): takes every recipient but
refuse@ (550) and later@ (450), and answers DATA with ``data_reply``, keeping what it took."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class RemoteMX:
    host: str
    port: int = 25
    data_reply: str = "250 OK remote-queued"
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if address.startswith("refuse@"):
            return "550 5.1.1 <refuse@...>: no such user here"
        if address.startswith("later@"):
            return "450 4.2.1 try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply.startswith("250"):
            with self.lock:
                self.received.append((envelope.mail_from or "", list(envelope.rcpt_tos),
                                      envelope.original_content or b""))
        return self.data_reply

    def start(self) -> None:
        self.controller = Controller(self, hostname=self.host, port=self.port, ready_timeout=10)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def messages_to(self, address: str) -> list[bytes]:
        with self.lock:
            return [data for _, rcpts, data in self.received if address in rcpts]
