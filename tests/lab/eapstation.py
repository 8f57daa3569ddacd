"""The station's side of EAP-TLS, EAP-TTLS and PEAP for tests that talk to ispd's code directly:
Python's TLS client on memory buffers, in EAP fragments (RFC 5216 §2.1.5) of at most
``fragment`` octets. A subclass says how a response reaches the server (``exchange``)."""

from __future__ import annotations

import ssl
from pathlib import Path

from ispd.radius.eap import EAPPacket
from ispd.radius.eaptls import FRAGMENT_SIZE, TLSFlag, decode_tls_payload


def client_hello(ca: Path | None = None) -> bytes:
    """A ClientHello as the payload of a first EAP-TLS/TTLS/PEAP response (flags octet 0)."""
    tls = ssl.create_default_context(cafile=str(ca) if ca else None).wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return b"\x00" + outgoing.read()
    raise AssertionError("a TLS client finished a handshake with no server")


class TLSStation:
    def __init__(self, ca: Path, method: int, first_request: EAPPacket, *, fragment: int = 1400,
                 client_pem: Path | None = None, server_hostname: str = "radius.isp.test",
                 server_fragment: int = FRAGMENT_SIZE) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        if client_pem is not None:
            context.load_cert_chain(str(client_pem))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.method, self.fragment, self.server_fragment = method, fragment, server_fragment
        self.request: EAPPacket | None = first_request  # the server's last EAP-Request; None: it stopped asking
        self.fragmented = 0  # EAP-Requests the server sent with more of their message to come

    def exchange(self, response: EAPPacket) -> EAPPacket | None:
        """Send ``response`` to the server; its next EAP-Request, or None."""
        raise NotImplementedError

    def respond(self, payload: bytes) -> EAPPacket | None:
        assert self.request is not None, "the server asks nothing more"
        self.request = self.exchange(EAPPacket(2, self.request.identifier, self.method, payload))
        if self.request is not None and self.request.type == self.method and self.request.data[0] & TLSFlag.MORE:
            self.fragmented += 1
        return self.request

    def send(self, message: bytes) -> EAPPacket | None:
        """``message`` in fragments, the first of several with its length; the server must
        acknowledge each but the last."""
        parts = [message[i:i + self.fragment] for i in range(0, len(message), self.fragment)] or [b""]
        for index, part in enumerate(parts):
            more = index < len(parts) - 1
            if more and index == 0:
                head = bytes((TLSFlag.MORE | TLSFlag.LENGTH,)) + len(message).to_bytes(4, "big")
            else:
                head = bytes((TLSFlag.MORE if more else 0,))
            request = self.respond(head + part)
            if more:
                assert request is not None and request.data == b"\x00"  # an acknowledgement
        return self.request

    def receive(self) -> None:
        """The server's message, fragment by fragment (each acknowledged), into the client's TLS."""
        while True:
            assert self.request is not None
            fragment = decode_tls_payload(self.request.data)
            self.incoming.write(fragment.data)
            if not fragment.flags & TLSFlag.MORE:
                return
            assert len(fragment.data) == self.server_fragment
            self.respond(b"\x00")

    def handshake(self) -> None:
        """The TLS handshake, to the server's Finished."""
        while True:
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                pass
            self.send(self.outgoing.read())
            self.receive()

    def send_inner(self, plaintext: bytes) -> EAPPacket | None:
        """Application data through the tunnel (TTLS's AVPs, PEAP's inner EAP)."""
        self.tls.write(plaintext)
        return self.send(self.outgoing.read())

    def read_inner(self) -> bytes:
        """What the server's last request carried through the tunnel."""
        self.receive()
        return self.tls.read()
