"""Encrypted DNS for subscribers in a running ispd: DNS over TLS (RFC 7858), DNS over HTTPS
(RFC 8484) on HTTP/2 and HTTP/3, DNS over QUIC (RFC 9250), spoken by real clients (kdig +tls
and +https, curl --http2, Python's ssl, the h2 library, aioquic) with certificates the tests make
with trustme.

Four ispd processes: ``server`` (everything on, local records, a policy zone; most tests), ``strict``
(small limits: two DoT connections per client, a one-second DoT idle timeout, four HTTP/2 streams
per connection), ``refusing`` (an ``allow`` without 127.0.0.1) and, per test, ones whose
certificates change or are broken. Nothing leaves loopback: the root hints name a "black hole" on
127.x (a UDP socket that never answers), so a name that is neither local nor policed takes
``request_timeout_seconds`` and ends in SERVFAIL, which is what the tests want of a slow query.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.svcbbase
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest
from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import SessionTicket

from tests.lab.certs import Certificates, issue
from tests.lab.ports import free_port, free_tcp_port, free_udp_port
from tests.lab.process import ISPD, IspdProcess, base_config, connections_out_of_descriptors, eventually
from tests.lab.quicclient import StreamResetByServer, _Client, _Pending, doq_exchange, h3_request

SERVER_NAME = "dns.isp.test"
PORTAL = "portal.isp.test"
PORTAL_ADDRESS = "198.18.0.10"
PORTAL_TTL = 300
BLOCKED = "blocked.isp.test"  # NXDOMAIN by policy
RPZ_ORIGIN = "rpz.isp.test"
POLICY = f"""$TTL 300
@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 60
@ NS localhost.
{BLOCKED} CNAME .
"""
DOQ_PROTOCOL_ERROR = 0x2
DOQ_EXCESSIVE_LOAD = 0x4
H3_REQUEST_CANCELLED = 0x10C  # RFC 9114 §8.1
PADDING_BLOCK = 468


# --- certificates ------------------------------------------------------------------------------------


Certs = Certificates  # the CA (for clients), the server's chain (leaf first) and its key


def make_certs(directory: Path, name: str = "server") -> Certs:
    """A fresh CA and a certificate from it for dns.isp.test and 127.0.0.1."""
    return issue(directory, SERVER_NAME, name=name)


# --- a black hole for everything that is not local -----------------------------------------------


@pytest.fixture(scope="module")
def black_hole() -> Iterator[str]:
    """An address on loopback whose port 53 takes UDP queries and never answers."""
    for _ in range(20):
        address = f"127.254.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((address, 53))
        except OSError:
            sock.close()
            continue
        with sock:
            yield address
        return
    pytest.skip("no free address for the black-hole root server")


# --- ispd with encrypted listeners ---------------------------------------------------------------


class EncryptedIspd(IspdProcess):
    """ispd with [dns] on a free port and DoT, DoH (HTTP/2 and HTTP/3) and DoQ on others."""

    def __init__(self, workdir: Path, certs: Certs, black_hole: str, *, dns: dict[str, Any] | None = None,
                 **listeners: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.certs = certs
        self.port = free_port()  # DNS takes it over UDP and TCP (a TCP-only pick failed CI once)
        self.dot_port = free_tcp_port()
        self.doh_port = free_tcp_port()
        self.doh3_port = free_udp_port()
        self.doq_port = free_udp_port()
        (workdir / "root.hints").write_text(f". 3600000 NS a.root.lab.\na.root.lab. 3600000 A {black_hole}\n")
        (workdir / "policy.rpz").write_text(POLICY)
        files = {"certificate": str(certs.certificate), "private_key": str(certs.private_key)}
        section: dict[str, Any] = {
            "enabled": True,
            "listen": [f"127.0.0.1:{self.port}"],
            "allow": ["127.0.0.0/8"],
            "root_hints": str(workdir / "root.hints"),
            "local_records": [f"{PORTAL}. {PORTAL_TTL} A {PORTAL_ADDRESS}"],
            "policy_zone": [{"name": RPZ_ORIGIN, "file": str(workdir / "policy.rpz")}],
            "resolver": {"do_ipv6": False, "request_timeout_seconds": 1.5},
            "dot": {"listen": [f"127.0.0.1:{self.dot_port}"], **files},
            "doh": {"listen": [f"127.0.0.1:{self.doh_port}"], "listen_http3": [f"127.0.0.1:{self.doh3_port}"],
                    **files},
            "doq": {"listen": [f"127.0.0.1:{self.doq_port}"], **files},
        }
        for key, value in (dns or {}).items():
            section[key] = {**section[key], **value} if isinstance(section.get(key), dict) else value
        for key, values in listeners.items():
            section[key] = {**section[key], **values}
        super().__init__(workdir, base_config(workdir, dns=section))

    def metric(self, name: str, transport: str) -> float:
        return self.metric_value(name, {"transport": transport}) or 0.0

    def assert_clean(self) -> None:
        """Running, and nothing a client did reached the log as an unhandled error."""
        assert self.proc is not None and self.proc.poll() is None, f"ispd exited:\n{self.log_text()}"
        text = self.log_text()
        assert "Traceback" not in text and "exception was never retrieved" not in text, text[-6000:]


@contextlib.contextmanager
def running(ispd: EncryptedIspd) -> Iterator[EncryptedIspd]:
    with ispd:
        ispd.start()
        yield ispd
        ispd.assert_clean()
        # A clean stop too: SIGTERM closes every listener and connection without an error.
        assert ispd.terminate() == 0, ispd.log_text()[-3000:]
        assert "unexpected error" not in ispd.log_text(), ispd.log_text()[-3000:]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: Certs, black_hole: str) -> Iterator[EncryptedIspd]:
    with running(EncryptedIspd(tmp_path_factory.mktemp("ispd-encrypted"), certs, black_hole)) as ispd:
        yield ispd


STRICT_STREAMS = 4


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, certs: Certs, black_hole: str) -> Iterator[EncryptedIspd]:
    ispd = EncryptedIspd(tmp_path_factory.mktemp("ispd-strict"), certs, black_hole,
                         dns={"resolver": {"request_timeout_seconds": 3.0}},
                         dot={"max_connections_per_client": 2, "idle_timeout_seconds": 1.0,
                              "handshake_timeout_seconds": 1.0},
                         doh={"max_streams_per_connection": STRICT_STREAMS, "idle_timeout_seconds": 2.0},
                         doq={"max_connections_per_client": 2, "idle_timeout_seconds": 1.0})
    with running(ispd):
        yield ispd


# --- clients -----------------------------------------------------------------------------------------


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")


def query(qname: str = PORTAL, qtype: str = "A", *, msg_id: int | None = None, edns: bool = True) -> dns.message.Message:
    message = dns.message.make_query(qname, qtype, use_edns=0 if edns else False)
    if msg_id is not None:
        message.id = msg_id
    return message


def addresses(reply: dns.message.Message) -> set[str]:
    return {rdata.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rdata in rrset}


def b64url(wire: bytes) -> str:
    return base64.urlsafe_b64encode(wire).decode().rstrip("=")


@dataclass
class Kdig:
    status: str
    answer: list[str]
    padding: int | None
    received: int | None
    text: str


def kdig(ispd: EncryptedIspd, *options: str, qname: str = PORTAL, qtype: str = "A", ca: Path | None = None) -> Kdig:
    port = ispd.doh_port if any(o.startswith("+https") for o in options) else ispd.dot_port
    command = ["kdig", "@127.0.0.1", "-p", str(port), f"+tls-ca={ca or ispd.certs.ca}",
               f"+tls-hostname={SERVER_NAME}", "+time=5", "+retry=0", *options, qname, qtype]
    result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    text = result.stdout + result.stderr
    status = re.search(r"status: ([A-Z]+)", text)
    padding = re.search(r";; PADDING: (\d+) B", text)
    received = re.search(r";; Received (\d+) B", text)
    answer = []
    if ";; ANSWER SECTION:" in text:
        for line in text.split(";; ANSWER SECTION:", 1)[1].splitlines()[1:]:
            if not line.strip() or line.startswith(";;"):
                break
            answer.append(" ".join(line.split()))
    return Kdig(status.group(1) if status else "FAILED", answer, int(padding.group(1)) if padding else None,
                int(received.group(1)) if received else None, text)


@dataclass
class HTTPResult:
    status: int
    version: str
    headers: dict[str, str]
    body: bytes


def curl(ispd: EncryptedIspd, target: str, *args: str, tmp_path: Path) -> HTTPResult:
    headers_file, body_file = tmp_path / "headers.txt", tmp_path / "body.bin"
    command = ["curl", "-s", "--http2", "--max-time", "10", "--cacert", str(ispd.certs.ca),
               "--resolve", f"{SERVER_NAME}:{ispd.doh_port}:127.0.0.1", "-D", str(headers_file),
               "-o", str(body_file), "-w", "%{http_code} %{http_version}", *args,
               f"https://{SERVER_NAME}:{ispd.doh_port}{target}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    code, version = result.stdout.split()
    headers: dict[str, str] = {}
    for line in headers_file.read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if value:
            headers[name.strip().lower()] = value.strip()
    return HTTPResult(int(code), version, headers, body_file.read_bytes())


def tls_context(ca: Path, alpn: list[str], **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(alpn)
    for attribute, version in versions.items():
        setattr(context, attribute, version)
    return context


def dot_connect(ispd: EncryptedIspd, *, ca: Path | None = None, source: str | None = None,
                **versions: ssl.TLSVersion) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", ispd.dot_port), timeout=5,
                                   source_address=(source, 0) if source else None)
    try:
        return tls_context(ca or ispd.certs.ca, ["dot"], **versions).wrap_socket(raw, server_hostname=SERVER_NAME)
    except BaseException:
        raw.close()
        raise


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def dot_send(sock: socket.socket, *messages: dns.message.Message) -> None:
    sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in messages)))


def dot_receive(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", recv_exactly(sock, 2))
    return recv_exactly(sock, length)


def dot_ask(sock: socket.socket, message: dns.message.Message) -> dns.message.Message:
    dot_send(sock, message)
    return dns.message.from_wire(dot_receive(sock))


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server ends the connection within ``timeout`` (EOF or a reset)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


class H2Client:
    """HTTP/2 over TLS with the h2 library, driven by hand, for what curl will not do."""

    def __init__(self, ispd: EncryptedIspd) -> None:
        raw = socket.create_connection(("127.0.0.1", ispd.doh_port), timeout=5)
        self.sock = tls_context(ispd.certs.ca, ["h2"]).wrap_socket(raw, server_hostname=SERVER_NAME)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.flush()
        self.responses: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.eof = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] = (),
                end_stream: bool = True) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(b":method", method.encode()), (b":scheme", b"https"),
                                           (b":authority", SERVER_NAME.encode()), (b":path", path.encode()),
                                           *headers], end_stream=end_stream and not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=end_stream)
        self.flush()
        return stream_id

    def read_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the server")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                self.eof = True
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.eof = True
                return
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    self.responses[event.stream_id] = (dict(event.headers), bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    self.responses[event.stream_id][1].extend(event.data)
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    self.resets[event.stream_id] = event.error_code
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = event
            with contextlib.suppress(OSError):
                self.flush()

    def response(self, stream_id: int, timeout: float = 5.0) -> tuple[int, dict[bytes, bytes], bytes]:
        self.read_until(lambda: stream_id in self.ended or stream_id in self.resets, timeout)
        assert stream_id in self.ended, (stream_id, self.resets, self.terminated)
        headers, body = self.responses[stream_id]
        return int(headers[b":status"]), headers, bytes(body)

    def close(self) -> None:
        self.sock.close()


class ServerClosed(Exception):
    def __init__(self, event: ConnectionTerminated) -> None:
        super().__init__(f"closed by the server: {event.error_code:#x} {event.reason_phrase!r}")
        self.error_code = event.error_code


class _DoQProbe(_Client):
    """quicclient's DoQ client, told when the server closes the connection."""

    terminated: ConnectionTerminated | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            for pending in self.pending.values():
                if not pending.future.done():
                    pending.future.set_exception(ServerClosed(event))
            self.pending.clear()
        super().quic_event_received(event)


def quic_configuration(ca: Path, alpn: list[str]) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=alpn, server_name=SERVER_NAME)
    configuration.load_verify_locations(str(ca))
    return configuration


async def doq_probe(ispd: EncryptedIspd, payload: bytes) -> bytes:
    """Send ``payload`` as it is on one DoQ stream; the reply, or ``ServerClosed``."""
    async with asyncio.timeout(5), connect("127.0.0.1", ispd.doq_port,
                                                 configuration=quic_configuration(ispd.certs.ca, ["doq"]),
                                                 create_protocol=_DoQProbe) as client:
        assert isinstance(client, _DoQProbe)
        return await client.raw_stream(payload)


async def doq_unidirectional(ispd: EncryptedIspd, payload: bytes) -> None:
    """Send ``payload`` on a client-initiated unidirectional stream; ``ServerClosed`` is expected."""
    async with asyncio.timeout(5), connect("127.0.0.1", ispd.doq_port,
                                                 configuration=quic_configuration(ispd.certs.ca, ["doq"]),
                                                 create_protocol=_DoQProbe) as client:
        assert isinstance(client, _DoQProbe)
        stream_id = client._quic.get_next_available_stream_id(is_unidirectional=True)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        client.pending[stream_id] = _Pending(future)
        client._quic.send_stream_data(stream_id, payload, end_stream=True)
        client.transmit()
        await future


def doq(ispd: EncryptedIspd, *messages: dns.message.Message, ca: Path | None = None) -> list[dns.message.Message]:
    for message in messages:
        message.id = 0  # RFC 9250 §4.2.1
    replies = asyncio.run(doq_exchange("127.0.0.1", ispd.doq_port, [m.to_wire() for m in messages],
                                       cafile=str(ca or ispd.certs.ca), server_name=SERVER_NAME))
    return [dns.message.from_wire(r) for r in replies]


def h3(ispd: EncryptedIspd, method: str, path: str, body: bytes = b"",
       headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
    return asyncio.run(h3_request("127.0.0.1", ispd.doh3_port, method, path, body, headers,
                                  cafile=str(ispd.certs.ca), server_name=SERVER_NAME))


# === DoT ===============================================================================================


def test_kdig_over_tls_resolves_and_the_reply_is_padded(server: EncryptedIspd) -> None:
    need("kdig")
    result = kdig(server, "+tls")
    assert result.status == "NOERROR", result.text
    assert result.answer == [f"{PORTAL}. {PORTAL_TTL} IN A {PORTAL_ADDRESS}"], result.text
    assert result.padding is not None and result.received == PADDING_BLOCK, result.text
    assert "TLS1.3" in result.text, result.text


def test_kdig_over_tls_sees_the_policy(server: EncryptedIspd) -> None:
    need("kdig")
    result = kdig(server, "+tls", qname=BLOCKED)
    assert result.status == "NXDOMAIN" and not result.answer, result.text
    assert RPZ_ORIGIN in result.text, result.text


def test_a_query_without_edns_is_not_padded(server: EncryptedIspd) -> None:
    with dot_connect(server) as sock:
        reply = dot_ask(sock, query(edns=False))
        assert addresses(reply) == {PORTAL_ADDRESS} and reply.edns < 0
        padded = dot_ask(sock, query())
        assert len(padded.to_wire()) % PADDING_BLOCK == 0
        assert [o.otype for o in padded.options] == [dns.edns.OptionType.PADDING]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_with_alpn_dot(server: EncryptedIspd, version: ssl.TLSVersion) -> None:
    with dot_connect(server, minimum_version=version, maximum_version=version) as sock:
        assert sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        assert sock.selected_alpn_protocol() == "dot"
        assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}


def test_pipelined_queries_are_all_answered_and_the_slow_one_last(server: EncryptedIspd) -> None:
    # The first query needs the (black-holed) root: its SERVFAIL comes after the others'
    # answers, which do not wait for it (RFC 7766 §6.2.1.1).
    slow = query("slow.example.test", msg_id=1000)
    fast = [query(PORTAL, "A", msg_id=1001), query(BLOCKED, "A", msg_id=1002), query(PORTAL, "AAAA", msg_id=1003),
            *(query(PORTAL, "A", msg_id=1004 + i) for i in range(8))]
    with dot_connect(server) as sock:
        dot_send(sock, slow, *fast)
        replies = [dns.message.from_wire(dot_receive(sock)) for _ in range(1 + len(fast))]
    by_id = {reply.id: reply for reply in replies}
    assert sorted(by_id) == sorted(m.id for m in (slow, *fast))
    for message in (slow, *fast):
        assert by_id[message.id].question == message.question
    assert replies[-1].id == slow.id and replies[-1].rcode() == dns.rcode.SERVFAIL
    assert addresses(by_id[1001]) == {PORTAL_ADDRESS}
    assert by_id[1002].rcode() == dns.rcode.NXDOMAIN
    assert by_id[1003].rcode() == dns.rcode.NOERROR and not by_id[1003].answer
    assert all(len(reply.to_wire()) % PADDING_BLOCK == 0 for reply in replies)


def test_an_oversized_length_closes_the_connection(server: EncryptedIspd) -> None:
    before = server.metric("ispd_dns_transport_bad_requests_total", "tls")
    with dot_connect(server) as sock:
        sock.sendall(struct.pack("!H", 4097) + bytes(100))
        assert closed_by_server(sock, 5)
    assert server.metric("ispd_dns_transport_bad_requests_total", "tls") == before + 1
    with dot_connect(server) as sock:
        assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}


def test_garbage_instead_of_a_tls_handshake_is_counted(server: EncryptedIspd) -> None:
    before = server.metric("ispd_dns_transport_handshake_failures_total", "tls")
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4,
                    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"):  # a ClientHello record cut short
        with socket.create_connection(("127.0.0.1", server.dot_port), timeout=5) as sock:
            sock.sendall(garbage)
            assert closed_by_server(sock, 5)
    eventually(lambda: server.metric("ispd_dns_transport_handshake_failures_total", "tls") >= before + 3)
    with dot_connect(server) as sock:
        assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}


def test_a_client_that_trusts_another_ca_fails_the_handshake(server: EncryptedIspd, tmp_path: Path) -> None:
    other = make_certs(tmp_path, "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        dot_connect(server, ca=other.ca)


def test_garbage_after_the_handshake_ends_that_connection_only(server: EncryptedIspd) -> None:
    with dot_connect(server) as sock:
        assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}
        # A record that does not decrypt: written on the TCP socket under the TLS layer.
        with socket.socket(fileno=os.dup(sock.fileno())) as raw:
            raw.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))
        assert closed_by_server(sock, 5)
    with dot_connect(server) as sock:
        assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}
    time.sleep(0.2)
    server.assert_clean()


# === DoH over HTTP/2 =======================================================================================


def test_kdig_over_https_resolves(server: EncryptedIspd) -> None:
    need("kdig")
    for options in (("+https",), ("+https-get",)):
        result = kdig(server, *options)
        assert result.status == "NOERROR", result.text
        assert result.answer == [f"{PORTAL}. {PORTAL_TTL} IN A {PORTAL_ADDRESS}"], result.text
        assert result.received == PADDING_BLOCK, result.text


def test_curl_get_and_post(server: EncryptedIspd, tmp_path: Path) -> None:
    need("curl")
    wire = query(msg_id=0).to_wire()
    (tmp_path / "query.bin").write_bytes(wire)
    for args, target in (((), f"/dns-query?dns={b64url(wire)}"),
                         (("--data-binary", f"@{tmp_path / 'query.bin'}", "-H", "content-type: application/dns-message"),
                          "/dns-query")):
        result = curl(server, target, *args, tmp_path=tmp_path)
        assert (result.status, result.version) == (200, "2"), result
        assert result.headers["content-type"] == "application/dns-message"
        assert result.headers["cache-control"] == f"max-age={PORTAL_TTL}"
        assert int(result.headers["content-length"]) == len(result.body)
        assert f'h3=":{server.doh3_port}"' in result.headers["alt-svc"]
        reply = dns.message.from_wire(result.body)
        assert reply.id == 0 and addresses(reply) == {PORTAL_ADDRESS}
        assert len(result.body) % PADDING_BLOCK == 0
    # A client that speaks HTTP/1.1 anyway gets an answer it can read, not HTTP/2 frames.
    old = curl(server, f"/dns-query?dns={b64url(wire)}", "--http1.1", tmp_path=tmp_path)
    assert (old.status, old.version, old.body) == (505, "1.1", b"DNS over HTTPS here is HTTP/2 (RFC 8484)\r\n")


def test_a_policy_nxdomain_over_doh_is_cached_for_the_soa_minimum(server: EncryptedIspd, tmp_path: Path) -> None:
    need("curl")
    result = curl(server, f"/dns-query?dns={b64url(query(BLOCKED, msg_id=0).to_wire())}", tmp_path=tmp_path)
    assert result.status == 200, result
    reply = dns.message.from_wire(result.body)
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer
    [soa] = reply.authority
    assert soa.name.to_text() == RPZ_ORIGIN + "."
    assert result.headers["cache-control"] == f"max-age={min(soa.ttl, soa[0].minimum)}"


def test_a_servfail_is_a_200_that_is_not_stored(server: EncryptedIspd, tmp_path: Path) -> None:
    need("curl")
    result = curl(server, f"/dns-query?dns={b64url(query('nowhere.example.test', msg_id=0).to_wire())}",
                  tmp_path=tmp_path)
    assert result.status == 200 and result.headers["cache-control"] == "no-store", result
    assert dns.message.from_wire(result.body).rcode() == dns.rcode.SERVFAIL


HTTP_ERRORS = [
    ("wrong path", 404, ("/resolve?dns={q}",)),
    ("PUT", 405, ("/dns-query", "-X", "PUT", "--data-binary", "@{file}", "-H", "content-type: application/dns-message")),
    ("HEAD", 405, ("/dns-query?dns={q}", "--head")),  # and no content: curl fails on a malformed one
    ("POST text/plain", 415, ("/dns-query", "--data-binary", "@{file}", "-H", "content-type: text/plain")),
    ("POST over max_query_bytes", 413, ("/dns-query", "--data-binary", "@{big}",
                                        "-H", "content-type: application/dns-message")),
    ("bad base64", 400, ("/dns-query?dns=not*base64!",)),
    ("missing dns=", 400, ("/dns-query?name=portal.isp.test",)),
    ("GET of a 5000-byte query", 414, ("/dns-query?dns=" + "A" * 6700,)),
]


@pytest.mark.parametrize(("status", "args"), [(s, a) for _, s, a in HTTP_ERRORS], ids=[n for n, _, _ in HTTP_ERRORS])
def test_http_errors_with_curl(server: EncryptedIspd, tmp_path: Path, status: int, args: tuple[str, ...]) -> None:
    need("curl")
    wire = query(msg_id=0).to_wire()
    (tmp_path / "query.bin").write_bytes(wire)
    (tmp_path / "big.bin").write_bytes(wire + bytes(5000))
    values = {"q": b64url(wire), "file": str(tmp_path / "query.bin"), "big": str(tmp_path / "big.bin")}
    target, *rest = (arg.format(**values) for arg in args)
    before = server.metric("ispd_dns_transport_bad_requests_total", "https")
    result = curl(server, target, *rest, tmp_path=tmp_path)
    assert result.status == status, result
    assert result.headers["content-type"].startswith("text/plain")
    if status == 405:
        assert result.headers["allow"] == "GET, POST"
    assert server.metric("ispd_dns_transport_bad_requests_total", "https") == before + 1


def test_a_truncated_body_does_not_hurt_the_server(server: EncryptedIspd, tmp_path: Path) -> None:
    wire = query(msg_id=0).to_wire()
    headers = [(b"content-type", b"application/dns-message"), (b"content-length", b"200")]
    # 1. The client promises 200 bytes, sends 33 and goes away.
    client = H2Client(server)
    client.request("POST", "/dns-query", wire, headers, end_stream=False)
    client.close()
    # 2. The client promises 200 bytes and ends the stream after 33: a malformed request.
    client = H2Client(server)
    stream_id = client.request("POST", "/dns-query", wire, headers)
    client.read_until(lambda: stream_id in client.ended or stream_id in client.resets or
                      client.terminated is not None, 5)
    assert stream_id not in client.ended, "a body shorter than its content-length was answered"
    client.close()
    # The next requests are fine, on a new connection and over curl.
    client = H2Client(server)
    status, _, body = client.response(client.request("GET", f"/dns-query?dns={b64url(wire)}"))
    assert status == 200 and addresses(dns.message.from_wire(body)) == {PORTAL_ADDRESS}
    client.close()
    if shutil.which("curl"):
        assert curl(server, f"/dns-query?dns={b64url(wire)}", tmp_path=tmp_path).status == 200
    server.assert_clean()


def test_many_requests_on_one_connection_at_once(server: EncryptedIspd) -> None:
    client = H2Client(server)
    streams = {}
    for index in range(20):
        name = PORTAL if index % 2 else BLOCKED
        wire = query(name, msg_id=0).to_wire()
        if index % 3:
            stream_id = client.request("GET", f"/dns-query?dns={b64url(wire)}")
        else:
            stream_id = client.request("POST", "/dns-query", wire, [(b"content-type", b"application/dns-message")])
        streams[stream_id] = name
    for stream_id, name in streams.items():
        status, _, body = client.response(stream_id)
        reply = dns.message.from_wire(body)
        assert status == 200 and reply.question[0].name.to_text() == name + "."
    client.close()


# === DoH over HTTP/3 and DoQ (aioquic) ===========================================================================


def test_http3_get_and_post(server: EncryptedIspd) -> None:
    wire = query(msg_id=0).to_wire()
    for method, path, body, headers in (("GET", f"/dns-query?dns={b64url(wire)}", b"", None),
                                        ("POST", "/dns-query", wire, [(b"content-type", b"application/dns-message")])):
        status, response_headers, reply_wire = h3(server, method, path, body, headers)
        assert status == 200 and response_headers[b"content-type"] == b"application/dns-message"
        assert response_headers[b"cache-control"] == b"max-age=%d" % PORTAL_TTL
        assert addresses(dns.message.from_wire(reply_wire)) == {PORTAL_ADDRESS}
        assert len(reply_wire) % PADDING_BLOCK == 0


def test_http3_errors_and_policy(server: EncryptedIspd) -> None:
    wire = query(msg_id=0).to_wire()
    assert h3(server, "GET", f"/elsewhere?dns={b64url(wire)}")[0] == 404
    assert h3(server, "POST", "/dns-query", wire, [(b"content-type", b"text/plain")])[0] == 415
    assert h3(server, "POST", "/dns-query", wire + bytes(5000), [(b"content-type", b"application/dns-message")])[0] == 413
    status, _, body = h3(server, "GET", f"/dns-query?dns={b64url(query(BLOCKED, msg_id=0).to_wire())}")
    assert status == 200 and dns.message.from_wire(body).rcode() == dns.rcode.NXDOMAIN
    # A query the engine drops (here a response, QR set, which is never answered) is cancelled:
    # H3_REQUEST_REJECTED says it was not processed, which invites a retry (RFC 9114 §4.1.1).
    response = bytearray(query(msg_id=0).to_wire())
    response[2] |= 0x80
    with pytest.raises(StreamResetByServer) as reset:
        h3(server, "GET", f"/dns-query?dns={b64url(bytes(response))}")
    assert reset.value.code == H3_REQUEST_CANCELLED


def test_doq_resolves_several_queries_on_one_connection(server: EncryptedIspd) -> None:
    portal, blocked, nodata = doq(server, query(), query(BLOCKED), query(PORTAL, "AAAA"))
    assert addresses(portal) == {PORTAL_ADDRESS} and portal.id == 0
    assert blocked.rcode() == dns.rcode.NXDOMAIN
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert all(len(reply.to_wire()) % PADDING_BLOCK == 0 for reply in (portal, blocked, nodata))


def test_doq_offers_no_session_tickets_so_no_0rtt(server: EncryptedIspd) -> None:
    tickets: list[SessionTicket] = []

    async def ask() -> bytes:
        async with connect("127.0.0.1", server.doq_port, configuration=quic_configuration(server.certs.ca, ["doq"]),
                           create_protocol=_DoQProbe, session_ticket_handler=tickets.append) as client:
            assert isinstance(client, _DoQProbe)
            answer = await client.doq(query(msg_id=0).to_wire())
            await asyncio.sleep(0.2)  # a NewSessionTicket would have come with or right after the handshake
            return answer

    assert addresses(dns.message.from_wire(asyncio.run(ask()))) == {PORTAL_ADDRESS}
    assert tickets == []


MALFORMED_DOQ = [
    ("message ID not 0", lambda wire: struct.pack("!H", len(wire)) + b"\x12\x34" + wire[2:]),
    ("length prefix larger than the message", lambda wire: struct.pack("!H", len(wire) + 5) + wire),
    ("length prefix smaller than the message", lambda wire: struct.pack("!H", len(wire) - 5) + wire),
    ("no length prefix", lambda wire: wire),
]


@pytest.mark.parametrize("make", [m for _, m in MALFORMED_DOQ], ids=[n for n, _ in MALFORMED_DOQ])
def test_malformed_doq_closes_the_connection_with_protocol_error(server: EncryptedIspd,
                                                                 make: Callable[[bytes], bytes]) -> None:
    before = server.metric("ispd_dns_transport_bad_requests_total", "quic")
    with pytest.raises(ServerClosed) as closed:
        asyncio.run(doq_probe(server, make(query(msg_id=0).to_wire())))
    assert closed.value.error_code == DOQ_PROTOCOL_ERROR
    assert server.metric("ispd_dns_transport_bad_requests_total", "quic") == before + 1
    [reply] = doq(server, query())
    assert addresses(reply) == {PORTAL_ADDRESS}


def test_an_oversized_doq_query_resets_its_stream_only(server: EncryptedIspd) -> None:
    async def exchange() -> tuple[int, bytes]:
        async with connect("127.0.0.1", server.doq_port, configuration=quic_configuration(server.certs.ca, ["doq"]),
                           create_protocol=_DoQProbe) as client:
            assert isinstance(client, _DoQProbe)
            with pytest.raises(StreamResetByServer) as reset:
                await client.raw_stream(struct.pack("!H", 5000) + b"\0\0" + bytes(4998))
            return reset.value.code, await client.doq(query(msg_id=0).to_wire())

    before = server.metric("ispd_dns_transport_bad_requests_total", "quic")
    code, reply = asyncio.run(asyncio.wait_for(exchange(), 5))
    assert code == DOQ_EXCESSIVE_LOAD
    assert addresses(dns.message.from_wire(reply)) == {PORTAL_ADDRESS}  # the same connection goes on
    assert server.metric("ispd_dns_transport_bad_requests_total", "quic") == before + 1


def test_a_doq_query_on_a_unidirectional_stream_is_a_protocol_error(server: EncryptedIspd) -> None:
    wire = query(msg_id=0).to_wire()
    with pytest.raises(ServerClosed) as closed:
        asyncio.run(doq_unidirectional(server, struct.pack("!H", len(wire)) + wire))
    assert closed.value.error_code == DOQ_PROTOCOL_ERROR
    [reply] = doq(server, query())
    assert addresses(reply) == {PORTAL_ADDRESS}


# === every transport ==========================================================================================


def test_every_transport_is_counted(server: EncryptedIspd, tmp_path: Path) -> None:
    transports = ("tls", "https", "http3", "quic")
    before = {t: (server.metric("ispd_dns_transport_queries_total", t),
                  server.metric("ispd_dns_transport_connections_total", t)) for t in transports}
    with dot_connect(server) as sock:
        dot_ask(sock, query())
    client = H2Client(server)
    client.response(client.request("GET", f"/dns-query?dns={b64url(query(msg_id=0).to_wire())}"))
    client.close()
    h3(server, "GET", f"/dns-query?dns={b64url(query(msg_id=0).to_wire())}")
    doq(server, query())
    for transport in transports:
        queries, connections = before[transport]
        eventually(lambda t=transport, q=queries, c=connections: (
            server.metric("ispd_dns_transport_queries_total", t) == q + 1
            and server.metric("ispd_dns_transport_connections_total", t) == c + 1))
    _, text = server.http_get("/metrics")
    assert 'ispd_dns_transport_answer_seconds_count{transport="quic"}' in text


# === address validation: QUIC Retry ===================================================================


@pytest.fixture(scope="module")
def validating(tmp_path_factory: pytest.TempPathFactory, certs: Certs, black_hole: str) -> Iterator[EncryptedIspd]:
    """DoQ with the default Retry (under a flood of handshakes), HTTP/3 with one for everybody."""
    ispd = EncryptedIspd(tmp_path_factory.mktemp("ispd-retry"), certs, black_hole,
                         doq={"handshake_timeout_seconds": 3.0}, doh={"retry": "always"})
    with running(ispd):
        yield ispd


def test_http3_with_retry_always_makes_each_client_prove_its_address(validating: EncryptedIspd) -> None:
    before = validating.metric("ispd_dns_transport_retries_total", "http3")
    for _ in range(2):
        status, _, body = h3(validating, "GET", f"/dns-query?dns={b64url(query(msg_id=0).to_wire())}")
        assert status == 200 and addresses(dns.message.from_wire(body)) == {PORTAL_ADDRESS}
    assert validating.metric("ispd_dns_transport_retries_total", "http3") == before + 2


FORGED = 80  # Initials from forged sources: more than RETRY_ABOVE_HANDSHAKES (64) under way


def test_doq_asks_for_a_retry_only_under_a_flood_of_handshakes(validating: EncryptedIspd) -> None:
    def retries() -> float:
        return validating.metric("ispd_dns_transport_retries_total", "quic")

    before = retries()
    [reply] = doq(validating, query())
    assert addresses(reply) == {PORTAL_ADDRESS} and retries() == before  # a quiet listener: no Retry

    # Initials that never go on, each from its own address (kept open: no port unreachable).
    with contextlib.ExitStack() as sockets:
        prefix = f"127.{random.randrange(200, 250)}.{random.randrange(1, 255)}"
        for i in range(FORGED):
            client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["doq"],
                                                                    server_name=SERVER_NAME))
            client.connect(("127.0.0.1", validating.doq_port), now=time.time())
            sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((f"{prefix}.{i + 1}", 0))
            for datagram, _ in client.datagrams_to_send(now=time.time()):
                sock.sendto(datagram, ("127.0.0.1", validating.doq_port))
        # The first 65 cost a handshake each; past that, every new one gets a Retry, no TLS.
        eventually(lambda: retries() == before + FORGED - 65)
        [reply] = doq(validating, query())  # a real client follows the Retry and is answered
        assert addresses(reply) == {PORTAL_ADDRESS} and retries() == before + FORGED - 65 + 1
        udp = dns.query.udp(query(), "127.0.0.1", port=validating.port, timeout=3)
        assert addresses(udp) == {PORTAL_ADDRESS}  # port 53 goes on meanwhile
    # Once the forged handshakes have timed out (3 s) and the hold is over (10 s), no more Retry.
    eventually(lambda: validating.metric("ispd_dns_transport_handshake_failures_total", "quic") >= 65, timeout=10)
    time.sleep(11)
    after = retries()
    [reply] = doq(validating, query())
    assert addresses(reply) == {PORTAL_ADDRESS} and retries() == after
    validating.assert_clean()


# === limits (the strict instance) ==================================================================================


def test_a_third_dot_connection_from_one_client_is_refused(strict: EncryptedIspd) -> None:
    before = strict.metric("ispd_dns_transport_refused_connections_total", "tls")
    with dot_connect(strict) as first, dot_connect(strict) as second:
        assert addresses(dot_ask(first, query())) == {PORTAL_ADDRESS}
        assert addresses(dot_ask(second, query())) == {PORTAL_ADDRESS}
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
            third = dot_connect(strict)
            try:
                dot_ask(third, query())  # TLS 1.3 may "finish" the handshake client-side first
            finally:
                third.close()
        assert strict.metric("ispd_dns_transport_refused_connections_total", "tls") == before + 1
        assert addresses(dot_ask(first, query())) == {PORTAL_ADDRESS}
    # Once those two are gone, a new one is welcome again.

    def welcome() -> bool:
        try:
            with dot_connect(strict) as sock:
                return addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}
        except (ssl.SSLError, ConnectionError, EOFError):
            return False
    eventually(welcome)


def test_an_idle_dot_connection_is_closed(strict: EncryptedIspd) -> None:
    with dot_connect(strict) as sock:
        for _ in range(3):  # activity keeps it open past the one-second idle timeout
            assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}
            time.sleep(0.5)
        started = time.monotonic()
        assert closed_by_server(sock, 5)
        assert 0.3 < time.monotonic() - started < 2.5


def test_a_tls_handshake_that_never_comes_times_out(strict: EncryptedIspd) -> None:
    before = strict.metric("ispd_dns_transport_handshake_failures_total", "tls")
    with socket.create_connection(("127.0.0.1", strict.dot_port), timeout=5) as silent:
        started = time.monotonic()
        # Meanwhile others are served: the silent client holds nothing up.
        with dot_connect(strict) as sock:
            assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}
        assert closed_by_server(silent, 5)
        assert 0.5 < time.monotonic() - started < 3
    eventually(lambda: strict.metric("ispd_dns_transport_handshake_failures_total", "tls") == before + 1)


def test_a_third_doq_connection_is_refused_and_idle_ones_are_closed(strict: EncryptedIspd) -> None:
    created: list[_DoQProbe] = []

    def probe(*args: Any, **kwargs: Any) -> _DoQProbe:
        created.append(_DoQProbe(*args, **kwargs))
        return created[-1]

    def link() -> Any:
        return connect("127.0.0.1", strict.doq_port, configuration=quic_configuration(strict.certs.ca, ["doq"]),
                       create_protocol=probe)

    async def scenario() -> None:
        async with link() as first, link() as second:
            for client in (first, second):
                assert isinstance(client, _DoQProbe)
                assert addresses(dns.message.from_wire(await client.doq(query(msg_id=0).to_wire()))) == \
                    {PORTAL_ADDRESS}
            started = time.monotonic()
            with pytest.raises(ConnectionError):
                async with link():
                    pass
            assert time.monotonic() - started < 2, "the refused client waited for its own timeout"
            third = created[-1]
            assert third.terminated is not None
            assert third.terminated.error_code == QuicErrorCode.CONNECTION_REFUSED, third.terminated
            # Both stay quiet past the server's one-second idle timeout: the server forgets them
            # (QUIC closes idle connections silently), so two new ones are welcome.
            await asyncio.sleep(2.0)
            async with link() as fourth, link() as fifth:
                for client in (fourth, fifth):
                    assert isinstance(client, _DoQProbe)
                    assert addresses(dns.message.from_wire(await client.doq(query(msg_id=0).to_wire()))) == \
                        {PORTAL_ADDRESS}

    before = strict.metric("ispd_dns_transport_refused_connections_total", "quic")
    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert strict.metric("ispd_dns_transport_refused_connections_total", "quic") == before + 1


def test_an_idle_http2_connection_is_closed_with_goaway(strict: EncryptedIspd) -> None:
    client = H2Client(strict)
    status, _, _ = client.response(client.request("GET", f"/dns-query?dns={b64url(query(msg_id=0).to_wire())}"))
    assert status == 200
    started = time.monotonic()
    client.read_until(lambda: client.terminated is not None, 5)
    assert client.terminated is not None and client.terminated.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert 1.5 < time.monotonic() - started < 3.5
    client.close()


def test_too_many_http2_streams_end_that_connection_only(strict: EncryptedIspd) -> None:
    abuser = H2Client(strict)
    # Streams opened before the server's SETTINGS arrive: h2 does not hold us to its limit yet.
    for _ in range(STRICT_STREAMS * 3):
        abuser.request("POST", "/dns-query", b"", [(b"content-type", b"application/dns-message")], end_stream=False)
    abuser.read_until(lambda: abuser.terminated is not None, 5)
    assert abuser.terminated is not None or abuser.eof or abuser.resets, "the stream flood went unnoticed"
    abuser.close()
    client = H2Client(strict)
    status, _, body = client.response(client.request("GET", f"/dns-query?dns={b64url(query(msg_id=0).to_wire())}"))
    assert status == 200 and addresses(dns.message.from_wire(body)) == {PORTAL_ADDRESS}
    client.close()


def test_streams_reset_while_resolving_do_not_pile_up(strict: EncryptedIspd) -> None:
    """The HTTP/2 "rapid reset" (CVE-2023-44487): requests that are reset right after they are
    sent free their stream slot at once; the work they started must not grow without bound."""
    before = strict.metric("ispd_dns_transport_bad_requests_total", "https")
    client = H2Client(strict)
    client.read_until(lambda: client.conn.remote_settings.max_concurrent_streams == STRICT_STREAMS, 5)
    for index in range(STRICT_STREAMS * 10):
        wire = query(f"reset{index}.example.test", msg_id=0).to_wire()
        stream_id = client.request("GET", f"/dns-query?dns={b64url(wire)}")
        client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        client.flush()
    # Slow queries beyond the stream limit were turned away (and counted) instead of resolved.
    eventually(lambda: strict.metric("ispd_dns_transport_bad_requests_total", "https")
               >= before + STRICT_STREAMS * 9, timeout=5)
    client.close()
    client = H2Client(strict)
    status, _, body = client.response(client.request("GET", f"/dns-query?dns={b64url(query(msg_id=0).to_wire())}"))
    assert status == 200 and addresses(dns.message.from_wire(body)) == {PORTAL_ADDRESS}
    client.close()


# === access control ===============================================================================================


def test_clients_outside_allow_are_refused_over_dot_as_over_udp(tmp_path: Path, certs: Certs, black_hole: str) -> None:
    # Only DoT, too: each encrypted listener is optional.
    ispd = EncryptedIspd(tmp_path, certs, black_hole, dns={"allow": ["192.0.2.0/24"]},
                         doh={"listen": [], "listen_http3": []}, doq={"listen": []})
    with running(ispd):
        [started] = ispd.log_events("dns.started")
        assert started["encrypted"] == [f"dot 127.0.0.1:{ispd.dot_port}"], started
        with dot_connect(ispd) as sock:
            reply = dot_ask(sock, query())
            assert reply.rcode() == dns.rcode.REFUSED and not reply.answer
        udp = dns.query.udp(query(), "127.0.0.1", port=ispd.port, timeout=3)
        assert udp.rcode() == dns.rcode.REFUSED
        with socket.socket() as probe:  # nothing on the DoH port
            assert probe.connect_ex(("127.0.0.1", ispd.doh_port)) != 0


def test_out_of_descriptors_tcp_and_dot_rest_say_so_and_serve_again(tmp_path: Path, certs: Certs,
                                                                    black_hole: str) -> None:
    """From a bug hunt under `prlimit --nofile=256`: past the limit, the loop's own TCP server
    (libuv) accepted each waiting DNS-over-TCP connection and closed it at once, with no line and
    no count (`dig +tcp` saw "connection reset"; DoT at least logged). Now both rest, log once
    and count, and the waiting connections are served once descriptors are free."""
    ispd = EncryptedIspd(tmp_path, certs, black_hole, doh={"listen": [], "listen_http3": []}, doq={"listen": []})
    with running(ispd):
        assert ispd.proc is not None
        waiting = connections_out_of_descriptors(ispd.proc.pid, [("127.0.0.1", ispd.port), ("127.0.0.1", ispd.dot_port)],
                                                 20, lambda i: f"127.0.{i + 1}.9")
        for transport in ("tcp", "tls"):
            assert ispd.metric("ispd_dns_transport_accept_failures_total", transport) >= 1
        try:
            # Not reset: the connections waited, and are served now.
            sock = waiting[0]
            sock.settimeout(5)
            wire = query().to_wire()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            reply = dns.message.from_wire(recv_exactly(sock, struct.unpack("!H", recv_exactly(sock, 2))[0]))
            assert addresses(reply) == {PORTAL_ADDRESS}
        finally:
            for sock in waiting:
                sock.close()
        assert {line["listener"] for line in ispd.log_events("dns.accept_failed")} == {"tcp", "dot"}
        assert len(ispd.log_events("dns.accept_failed")) == 2  # once a minute each, not per connection
        with dot_connect(ispd) as sock:
            assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}


# === certificates ===================================================================================================


def mismatched(tmp_path: Path, certs: Certs) -> Path:
    """A private key that belongs to another certificate."""
    return make_certs(tmp_path / "mismatch", "other").private_key


BROKEN = [
    ("dot", "missing certificate", lambda tmp, certs: {"certificate": str(tmp / "nowhere.pem")}, "nowhere.pem"),
    ("dot", "missing private key", lambda tmp, certs: {"private_key": str(tmp / "nokey.pem")}, "nokey.pem"),
    ("doh", "a key that does not match", lambda tmp, certs: {"private_key": str(mismatched(tmp, certs))}, "other.key"),
    ("doq", "a key that does not match", lambda tmp, certs: {"private_key": str(mismatched(tmp, certs))}, "other.key"),
    ("doq", "a certificate that is not PEM", lambda tmp, certs: {"certificate": str(certs.private_key)}, "server.key"),
]


@pytest.mark.parametrize(("section", "make", "named"), [(s, m, n) for s, _, m, n in BROKEN],
                         ids=[f"{s}-{d}" for s, d, _, _ in BROKEN])
def test_a_broken_certificate_stops_the_start_and_check_config_says_so(
        tmp_path: Path, certs: Certs, black_hole: str, section: str,
        make: Callable[[Path, Certs], dict[str, str]], named: str) -> None:
    broken = {key: {} for key in ("dot", "doh", "doq")}
    broken[section] = make(tmp_path, certs)
    with EncryptedIspd(tmp_path / "ispd", certs, black_hole, **broken) as ispd:
        ispd.start(wait_ready=False)
        assert ispd.proc is not None
        assert ispd.proc.wait(15) != 0
        log = ispd.log_text()
        assert f"{section}:" in log and named in log, log
        assert "Traceback" not in log, log
        check = subprocess.run([ISPD, "check-config", "-c", str(ispd.config_path)], capture_output=True, text=True,
                               timeout=30)
        assert check.returncode != 0, check
        assert named in check.stdout + check.stderr, check


def test_sighup_loads_new_certificates_and_keeps_established_connections(
        tmp_path: Path, black_hole: str) -> None:
    old = make_certs(tmp_path / "old")
    live = Certs(old.ca, tmp_path / "live.pem", tmp_path / "live.key")
    shutil.copy(old.certificate, live.certificate)
    shutil.copy(old.private_key, live.private_key)
    with running(EncryptedIspd(tmp_path / "ispd", live, black_hole)) as ispd:
        established = dot_connect(ispd, ca=old.ca)
        h2_established = H2Client(ispd)
        try:
            assert addresses(dot_ask(established, query())) == {PORTAL_ADDRESS}
            new = make_certs(tmp_path / "new")
            shutil.copy(new.certificate, live.certificate)
            shutil.copy(new.private_key, live.private_key)
            ispd.reload()
            # The connection from before still works, with the certificate it started with.
            assert addresses(dot_ask(established, query(msg_id=7))) == {PORTAL_ADDRESS}
            status, _, _ = h2_established.response(
                h2_established.request("GET", f"/dns-query?dns={b64url(query(msg_id=0).to_wire())}"))
            assert status == 200
            # A new connection gets the new certificate: the new CA verifies it, the old does not.
            with dot_connect(ispd, ca=new.ca) as sock:
                assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}
            with pytest.raises(ssl.SSLCertVerificationError):
                dot_connect(ispd, ca=old.ca)
            [reply] = doq(ispd, query(), ca=new.ca)
            assert addresses(reply) == {PORTAL_ADDRESS}
            with pytest.raises(ConnectionError):
                doq(ispd, query(), ca=old.ca)
            h3_status = asyncio.run(h3_request("127.0.0.1", ispd.doh3_port, "GET",
                                               f"/dns-query?dns={b64url(query(msg_id=0).to_wire())}",
                                               cafile=str(new.ca), server_name=SERVER_NAME))[0]
            assert h3_status == 200
        finally:
            established.close()
            h2_established.close()


def test_sighup_with_a_broken_certificate_keeps_the_old_one(tmp_path: Path, black_hole: str) -> None:
    old = make_certs(tmp_path / "old")
    live = Certs(old.ca, tmp_path / "live.pem", tmp_path / "live.key")
    shutil.copy(old.certificate, live.certificate)
    shutil.copy(old.private_key, live.private_key)
    with running(EncryptedIspd(tmp_path / "ispd", live, black_hole)) as ispd:
        live.private_key.write_bytes(make_certs(tmp_path / "other", "other").private_key.read_bytes())
        ispd.signal(signal.SIGHUP)
        ispd.wait_for("RELOADING=1")
        ispd.wait_for("READY=1")
        with dot_connect(ispd, ca=old.ca) as sock:
            assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}
        [reply] = doq(ispd, query(), ca=old.ca)
        assert addresses(reply) == {PORTAL_ADDRESS}
        assert "live.key" in ispd.log_text()


# --- Discovery of Designated Resolvers (RFC 9462) ------------------------------------------------


def test_ddr_designates_the_encrypted_listeners_and_a_client_can_verify_and_use_them(
        tmp_path: Path, certs: Certs, black_hole: str) -> None:
    """A DDR client's steps: `_dns.resolver.arpa. SVCB` over plain DNS (the answer read by
    dnspython's SVCB parser), then each advertised endpoint at its hint and port, its
    certificate checked for the address first asked (verified discovery, RFC 9462 §4.2), a
    query over DoT and over DoH at the advertised dohpath."""
    with running(EncryptedIspd(tmp_path / "ddr", certs, black_hole, dns={"ddr": {"name": SERVER_NAME}})) as ispd:
        reply = dns.query.udp(query("_dns.resolver.arpa.", "SVCB"), "127.0.0.1", port=ispd.port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
        svcb = sorted(reply.answer[0], key=lambda r: r.priority)
        params = [{dns.rdtypes.svcbbase.key_to_text(k): v.to_text() for k, v in r.params.items()} for r in svcb]
        assert [r.target.to_text() for r in svcb] == [f"{SERVER_NAME}."] * 4
        assert params == [
            {"alpn": '"h2"', "port": f'"{ispd.doh_port}"', "ipv4hint": '"127.0.0.1"',
             "dohpath": '"/dns-query{?dns}"'},
            {"alpn": '"h3"', "port": f'"{ispd.doh3_port}"', "ipv4hint": '"127.0.0.1"',
             "dohpath": '"/dns-query{?dns}"'},
            {"alpn": '"dot"', "port": f'"{ispd.dot_port}"', "ipv4hint": '"127.0.0.1"'},
            {"alpn": '"doq"', "port": f'"{ispd.doq_port}"', "ipv4hint": '"127.0.0.1"'},
        ]
        # §4.2: the certificate at the advertised DoT endpoint covers the plain address asked
        # (server_hostname = that address), and the designated name.
        for hostname in ("127.0.0.1", SERVER_NAME):
            raw = socket.create_connection(("127.0.0.1", int(params[2]["port"].strip('"'))), timeout=5)
            with tls_context(certs.ca, ["dot"]).wrap_socket(raw, server_hostname=hostname) as sock:
                assert addresses(dot_ask(sock, query())) == {PORTAL_ADDRESS}
        path = params[0]["dohpath"].strip('"').replace("{?dns}", "?dns=" + b64url(query().to_wire()))
        result = curl(ispd, path, tmp_path=tmp_path)
        assert result.status == 200 and addresses(dns.message.from_wire(result.body)) == {PORTAL_ADDRESS}
        # §5: the same at _dns.<name>; nothing else under resolver.arpa. is looked for upstream
        named = dns.query.udp(query(f"_dns.{SERVER_NAME}", "SVCB"), "127.0.0.1", port=ispd.port, timeout=5)
        assert sorted(r.to_text() for r in named.answer[0]) == sorted(r.to_text() for r in svcb)
        other = dns.query.udp(query("_other.resolver.arpa.", "SVCB"), "127.0.0.1", port=ispd.port, timeout=5)
        assert other.rcode() == dns.rcode.NOERROR and not other.answer  # RFC 9462 §6.4: NODATA


def test_ddr_is_not_answered_to_clients_the_acl_refuses(tmp_path: Path, certs: Certs, black_hole: str) -> None:
    with running(EncryptedIspd(tmp_path / "ddr-acl", certs, black_hole,
                               dns={"ddr": {"name": SERVER_NAME}, "allow": ["127.0.0.2/32"]})) as ispd:
        reply = dns.query.udp(query("_dns.resolver.arpa.", "SVCB"), "127.0.0.1", port=ispd.port, timeout=5)
        assert reply.rcode() == dns.rcode.REFUSED and not reply.answer
