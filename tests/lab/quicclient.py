"""DNS over QUIC and DoH over HTTP/3 clients on aioquic, for tests and by hand.

kdig 3.2.6 in Debian 12 crashes on +quic, and curl there has no HTTP/3, so the tests speak both
with aioquic's client side:

    .venv/bin/python -m tests.lab.quicclient doq 127.0.0.1 853 example.test A --cafile ca.pem
    .venv/bin/python -m tests.lab.quicclient h3 127.0.0.1 443 example.test A --cafile ca.pem
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ssl
import struct
import sys
from dataclasses import dataclass, field

import dns.message
import dns.rdatatype
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived, StreamReset


@dataclass
class _Pending:
    future: asyncio.Future[tuple[list[tuple[bytes, bytes]], bytes]]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


class StreamResetByServer(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset with error code {code:#x}")
        self.code = code


class _Client(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pending: dict[int, _Pending] = {}
        self.http: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self.pending:
            self.pending.pop(event.stream_id).future.set_exception(StreamResetByServer(event.error_code))
            return
        if self.http is not None:
            for h3 in self.http.handle_event(event):
                pending = self.pending.get(getattr(h3, "stream_id", -1))
                if pending is None:
                    continue
                if isinstance(h3, HeadersReceived):
                    pending.headers.extend(h3.headers)
                elif isinstance(h3, DataReceived):
                    pending.body += h3.data
                if getattr(h3, "stream_ended", False):
                    del self.pending[h3.stream_id]
                    pending.future.set_result((pending.headers, bytes(pending.body)))
            return
        if isinstance(event, StreamDataReceived) and event.stream_id in self.pending:
            pending = self.pending[event.stream_id]
            pending.body += event.data
            if event.end_stream:
                del self.pending[event.stream_id]
                pending.future.set_result(([], bytes(pending.body)))

    async def doq(self, query: bytes) -> bytes:
        stream_id = self._quic.get_next_available_stream_id()
        future = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = _Pending(future)
        self._quic.send_stream_data(stream_id, struct.pack("!H", len(query)) + query, end_stream=True)
        self.transmit()
        _, data = await future
        (length,) = struct.unpack_from("!H", data)
        if length != len(data) - 2:
            raise ValueError(f"DoQ reply length {length} but {len(data) - 2} bytes came")
        return data[2:]

    async def raw_stream(self, payload: bytes) -> bytes:
        """Send bytes as they are on a new stream (for malformed-input tests)."""
        stream_id = self._quic.get_next_available_stream_id()
        future = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = _Pending(future)
        self._quic.send_stream_data(stream_id, payload, end_stream=True)
        self.transmit()
        return (await future)[1]

    async def h3(self, method: str, authority: str, path: str, body: bytes = b"",
                 headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
        assert self.http is not None
        stream_id = self._quic.get_next_available_stream_id()
        future = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = _Pending(future)
        self.http.send_headers(stream_id, [(b":method", method.encode()), (b":scheme", b"https"),
                                           (b":authority", authority.encode()), (b":path", path.encode()),
                                           *(headers or [])], end_stream=not body)
        if body:
            self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        response_headers, response_body = await future
        as_dict = dict(response_headers)
        return int(as_dict[b":status"]), as_dict, response_body


def _configuration(alpn: list[str], cafile: str | None, server_name: str | None) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=alpn, server_name=server_name)
    if cafile:
        configuration.load_verify_locations(cafile)
    else:
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


async def doq_exchange(host: str, port: int, queries: list[bytes], *, cafile: str | None = None,
                       server_name: str | None = None, timeout: float = 5.0) -> list[bytes]:  # noqa: ASYNC109
    """Send each query on a stream of its own over one connection; the replies in order."""
    async with asyncio.timeout(timeout), connect(
            host, port, configuration=_configuration(["doq"], cafile, server_name),
            create_protocol=_Client) as client:
        assert isinstance(client, _Client)
        return list(await asyncio.gather(*(client.doq(q) for q in queries)))


async def doq_raw(host: str, port: int, payload: bytes, *, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
    async with asyncio.timeout(timeout), connect(
            host, port, configuration=_configuration(["doq"], None, None), create_protocol=_Client) as client:
        assert isinstance(client, _Client)
        return await client.raw_stream(payload)


async def h3_request(host: str, port: int, method: str, path: str, body: bytes = b"",
                     headers: list[tuple[bytes, bytes]] | None = None, *, cafile: str | None = None,
                     server_name: str | None = None,
                     timeout: float = 5.0) -> tuple[int, dict[bytes, bytes], bytes]:  # noqa: ASYNC109
    async with asyncio.timeout(timeout), connect(
            host, port, configuration=_configuration(H3_ALPN, cafile, server_name),
            create_protocol=_Client) as client:
        assert isinstance(client, _Client)
        client.http = H3Connection(client._quic)
        return await client.h3(method, server_name or host, path, body, headers)


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.quicclient", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["doq", "h3"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("type", nargs="?", default="A")
    parser.add_argument("--cafile")
    parser.add_argument("--server-name")
    parser.add_argument("--path", default="/dns-query")
    args = parser.parse_args()
    query = dns.message.make_query(args.name, dns.rdatatype.from_text(args.type), use_edns=0)
    query.id = 0
    wire = query.to_wire()
    if args.mode == "doq":
        (reply,) = asyncio.run(doq_exchange(args.host, args.port, [wire], cafile=args.cafile,
                                            server_name=args.server_name))
    else:
        encoded = base64.urlsafe_b64encode(wire).decode().rstrip("=")
        status, headers, reply = asyncio.run(h3_request(args.host, args.port, "GET", f"{args.path}?dns={encoded}",
                                                        cafile=args.cafile, server_name=args.server_name))
        print(f";; HTTP/3 {status}, " + ", ".join(f"{k.decode()}: {v.decode()}" for k, v in headers.items()
                                                  if not k.startswith(b":")))
        if status != 200:
            print(reply.decode(errors="replace"))
            return 1
    print(dns.message.from_wire(reply))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
