"""DNS over HTTPS (RFC 8484) without the HTTP: a request's method, path, headers and body in, a
DNS query or an HTTP error out; a DNS reply in, the response headers out.

The HTTP/2 and HTTP/3 transports (``ispd/dns/https.py``) parse frames with h2 and aioquic and
call this for every request, so both speak the same DoH:

- ``GET {path}?dns=<base64url query>`` (RFC 8484 §4.1: base64url without padding; padding is
  tolerated) and ``POST {path}`` with ``content-type: application/dns-message``;
- 404 for another path, 405 for another method, 415 for another content type, 413 for a body
  over the limit, 414 for a ``dns=`` parameter over it, 400 for anything else malformed (no
  ``dns=``, bad base64, fewer than 12 bytes);
- a 200 carries every DNS rcode (SERVFAIL is a DNS answer, not an HTTP error), with
  ``cache-control: max-age`` no longer than the smallest TTL of the answer section, nor for a
  negative answer (one through a CNAME too) than the SOA's TTL and MINIMUM (RFC 8484 §5.1);
  failures get ``no-store``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from ispd.dns.wire import RCode, RRType, WireError, decode_message, soa_minimum

CONTENT_TYPE = b"application/dns-message"
# RFC 4648 §5 alphabet, padding tolerated. The decoder alone would skip other characters and
# answer a query the client never sent.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class DoHError(Exception):
    """An HTTP error status for a request that is not a usable DoH query."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DoHRequest:
    method: bytes
    path: bytes  # with the query string
    content_type: bytes | None
    body: bytes


def query_of(request: DoHRequest, *, path: str, max_bytes: int) -> bytes:
    """The DNS query a request carries, or ``DoHError``."""
    target, _, query_string = request.path.partition(b"?")
    if target.decode("latin-1") != path:
        raise DoHError(404, "not found")
    if request.method == b"GET":
        values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("dns")
        if not values:
            raise DoHError(400, "GET needs a dns= parameter")
        encoded = values[0]
        if len(encoded) > (max_bytes * 4 + 2) // 3 + 2:
            raise DoHError(414, "query too long")
        if not _BASE64URL.fullmatch(encoded):
            raise DoHError(400, "dns= is not base64url")
        try:
            query = base64.urlsafe_b64decode(encoded.rstrip("=") + "=" * (-len(encoded.rstrip("=")) % 4))
        except (binascii.Error, ValueError):
            raise DoHError(400, "dns= is not base64url") from None
    elif request.method == b"POST":
        content_type = (request.content_type or b"").split(b";")[0].strip().lower()
        if content_type != CONTENT_TYPE:
            raise DoHError(415, "content-type must be application/dns-message")
        if len(request.body) > max_bytes:
            raise DoHError(413, "query too large")
        query = request.body
    else:
        raise DoHError(405, "only GET and POST")
    if len(query) > max_bytes:
        raise DoHError(413, "query too large")
    if len(query) < 12:
        raise DoHError(400, "not a DNS message")
    return query


def response_headers(reply: bytes) -> list[tuple[bytes, bytes]]:
    """Headers for a 200 carrying ``reply`` (``:status`` included)."""
    return [(b":status", b"200"), (b"content-type", CONTENT_TYPE),
            (b"content-length", str(len(reply)).encode()), (b"cache-control", cache_control(reply))]


def error_headers(status: int, body: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b":status", str(status).encode()), (b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode())]
    if status == 405:
        headers.append((b"allow", b"GET, POST"))
    return headers


def cache_control(reply: bytes) -> bytes:
    try:
        message = decode_message(reply)
    except WireError:
        return b"no-store"
    if message.rcode not in (RCode.NOERROR, RCode.NXDOMAIN):
        return b"no-store"
    # A negative answer reached through a CNAME (NXDOMAIN or NODATA for its target) has both an
    # answer and the SOA: it lasts no longer than either, else a CNAME of an hour kept a
    # name's NXDOMAIN in HTTP caches for that hour where the zone says 60 s (RFC 2308 §5).
    lifetimes = [rr.ttl for rr in message.answer]
    soas = [rr for rr in message.authority if rr.rtype == RRType.SOA]
    if soas:
        lifetimes.append(min(soas[0].ttl, soa_minimum(soas[0].rdata)))
    elif not lifetimes or message.rcode == RCode.NXDOMAIN:
        lifetimes.append(0)  # negative without a SOA: not to be cached (RFC 2308 §5)
    return b"max-age=%d" % min(lifetimes)
