"""RFC 8484 without HTTP (ispd/dns/doh.py): requests in, a DNS query or an HTTP status out;
replies in, response headers out. Table-driven, both ways."""

from __future__ import annotations

import base64

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from ispd.dns.doh import (
    CONTENT_TYPE,
    DoHError,
    DoHRequest,
    cache_control,
    error_headers,
    query_of,
    response_headers,
)

PATH = "/dns-query"
MAX = 512


def make_query(qname: str = "portal.isp.test", qtype: str = "A", *, edns: bool = False) -> bytes:
    query = dns.message.make_query(qname, qtype, use_edns=0 if edns else False)
    query.id = 0  # RFC 8484 §4.1: 0 for cache friendliness
    return query.to_wire()


QUERY = make_query(edns=True)  # 44 bytes: its base64 ends in "="
QUERY_NO_EDNS = make_query()  # 33 bytes: no padding needed
assert len(QUERY) % 3 and not len(QUERY_NO_EDNS) % 3


def b64(data: bytes, *, padded: bool = False) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if padded else text.rstrip("=")


def get(target: str) -> DoHRequest:
    return DoHRequest(b"GET", target.encode(), None, b"")


def post(body: bytes, content_type: bytes | None = CONTENT_TYPE, target: str = PATH) -> DoHRequest:
    return DoHRequest(b"POST", target.encode(), content_type, body)


# A DNS message that decodes to more than MAX bytes while its encoding stays under the 414 limit.
TOO_LARGE = QUERY + bytes(MAX + 1 - len(QUERY))
# Bytes whose base64url has both "-" and "_".
URLSAFE = QUERY + b"\x00\xfb\xef\xff"
assert {"-", "_"} <= set(base64.urlsafe_b64encode(URLSAFE).decode())

ACCEPTED = [
    ("GET, base64url without padding", get(f"{PATH}?dns={b64(QUERY)}"), QUERY),
    ("GET, base64url with padding", get(f"{PATH}?dns={b64(QUERY, padded=True)}"), QUERY),
    ("GET, a query whose encoding needs no padding", get(f"{PATH}?dns={b64(QUERY_NO_EDNS)}"), QUERY_NO_EDNS),
    ("GET, other parameters around dns=", get(f"{PATH}?ct=application/dns-message&dns={b64(QUERY)}&x=1"), QUERY),
    ("GET, the first of two dns=", get(f"{PATH}?dns={b64(QUERY)}&dns={b64(QUERY_NO_EDNS)}"), QUERY),
    ("GET, base64url of bytes that need - and _", get(f"{PATH}?dns={b64(URLSAFE)}"), URLSAFE),
    ("POST", post(QUERY), QUERY),
    ("POST, content-type with a parameter and capitals", post(QUERY, b"Application/DNS-Message; q=1"), QUERY),
    ("POST, exactly the limit", post(QUERY + bytes(MAX - len(QUERY))), QUERY + bytes(MAX - len(QUERY))),
    ("POST, a query string on the path is ignored", post(QUERY, target=f"{PATH}?dns=AAAA"), QUERY),
]


@pytest.mark.parametrize(("request_", "expected"), [(r, e) for _, r, e in ACCEPTED],
                         ids=[name for name, _, _ in ACCEPTED])
def test_the_query_a_request_carries(request_: DoHRequest, expected: bytes) -> None:
    assert query_of(request_, path=PATH, max_bytes=MAX) == expected


REFUSED = [
    ("another path", get(f"/resolve?dns={b64(QUERY)}"), 404),
    ("the path with a trailing slash", get(f"{PATH}/?dns={b64(QUERY)}"), 404),
    ("the path in another case", get(f"/DNS-query?dns={b64(QUERY)}"), 404),
    ("POST to another path", post(QUERY, target="/"), 404),
    ("PUT", DoHRequest(b"PUT", PATH.encode(), CONTENT_TYPE, QUERY), 405),
    ("DELETE", DoHRequest(b"DELETE", f"{PATH}?dns={b64(QUERY)}".encode(), None, b""), 405),
    ("HEAD", DoHRequest(b"HEAD", f"{PATH}?dns={b64(QUERY)}".encode(), None, b""), 405),
    ("lowercase get", DoHRequest(b"get", f"{PATH}?dns={b64(QUERY)}".encode(), None, b""), 405),
    ("POST text/plain", post(QUERY, b"text/plain"), 415),
    ("POST without content-type", post(QUERY, None), 415),
    ("POST application/dns-udpwireformat (the draft's type)", post(QUERY, b"application/dns-udpwireformat"), 415),
    ("POST one byte over the limit", post(QUERY + bytes(MAX + 1 - len(QUERY))), 413),
    ("POST far over the limit", post(bytes(65536)), 413),
    ("GET whose query decodes to more than the limit", get(f"{PATH}?dns={b64(TOO_LARGE)}"), 413),
    ("GET whose dns= is longer than any query within the limit", get(f"{PATH}?dns={'A' * 800}"), 414),
    ("GET without a query string", get(PATH), 400),
    ("GET without dns=", get(f"{PATH}?name=portal.isp.test&type=A"), 400),
    ("GET with an empty dns=", get(f"{PATH}?dns="), 400),
    ("GET with dns= of one character (not base64)", get(f"{PATH}?dns=A"), 400),
    ("GET with characters outside base64url", get(f"{PATH}?dns=!!{b64(QUERY)}"), 400),
    ("GET with standard base64 (+ and /)", get(f"{PATH}?dns={base64.b64encode(URLSAFE).decode()}"), 400),
    ("GET with a space inside the base64", get(f"{PATH}?dns={b64(QUERY)[:8]}%20{b64(QUERY)[8:]}"), 400),
    ("GET with fewer than 12 bytes", get(f"{PATH}?dns={b64(QUERY[:11])}"), 400),
    ("POST with an empty body", post(b""), 400),
    ("POST with fewer than 12 bytes", post(QUERY[:11]), 400),
]


@pytest.mark.parametrize(("request_", "status"), [(r, s) for _, r, s in REFUSED], ids=[name for name, _, _ in REFUSED])
def test_http_errors(request_: DoHRequest, status: int) -> None:
    with pytest.raises(DoHError) as raised:
        query_of(request_, path=PATH, max_bytes=MAX)
    assert raised.value.status == status, raised.value.reason
    assert raised.value.reason and "\n" not in raised.value.reason


def test_another_configured_path() -> None:
    assert query_of(get(f"/resolve?dns={b64(QUERY)}"), path="/resolve", max_bytes=MAX) == QUERY
    with pytest.raises(DoHError) as raised:
        query_of(get(f"{PATH}?dns={b64(QUERY)}"), path="/resolve", max_bytes=MAX)
    assert raised.value.status == 404


# --- responses ---------------------------------------------------------------------------------


def reply(rcode: int = dns.rcode.NOERROR, answer: tuple[str, ...] = (), authority: tuple[str, ...] = (), *,
          edns: bool = True) -> bytes:
    query = dns.message.make_query("portal.isp.test", "A", use_edns=0 if edns else False)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for section, texts in ((response.answer, answer), (response.authority, authority)):
        for text in texts:
            owner, ttl, rtype, rdata = text.split(None, 3)
            section.append(dns.rrset.from_text(owner, int(ttl), dns.rdataclass.IN, rtype, rdata))
    return response.to_wire()


SOA = "isp.test. {ttl} SOA ns.isp.test. hostmaster.isp.test. 1 3600 600 86400 {minimum}"

CACHE_CONTROL = [
    ("one record", reply(answer=("portal.isp.test. 300 A 198.18.0.10",)), b"max-age=300"),
    ("the smallest TTL of the answer", reply(answer=("portal.isp.test. 300 CNAME www.isp.test.",
                                                     "www.isp.test. 42 A 198.18.0.11")), b"max-age=42"),
    ("without EDNS", reply(answer=("portal.isp.test. 7 A 198.18.0.10",), edns=False), b"max-age=7"),
    ("TTL 0", reply(answer=("portal.isp.test. 0 A 198.18.0.10",)), b"max-age=0"),
    ("NXDOMAIN: SOA TTL below MINIMUM", reply(dns.rcode.NXDOMAIN, authority=(SOA.format(ttl=30, minimum=600),)),
     b"max-age=30"),
    ("NXDOMAIN: SOA MINIMUM below TTL", reply(dns.rcode.NXDOMAIN, authority=(SOA.format(ttl=3600, minimum=60),)),
     b"max-age=60"),
    ("NODATA: SOA", reply(authority=(SOA.format(ttl=900, minimum=120),)), b"max-age=120"),
    ("NXDOMAIN through a CNAME: SOA below the CNAME's TTL",
     reply(dns.rcode.NXDOMAIN, answer=("portal.isp.test. 3600 CNAME gone.isp.test.",),
           authority=(SOA.format(ttl=3600, minimum=60),)), b"max-age=60"),
    ("NODATA through a CNAME: SOA below the CNAME's TTL",
     reply(answer=("portal.isp.test. 3600 CNAME www.isp.test.",), authority=(SOA.format(ttl=900, minimum=120),)),
     b"max-age=120"),
    ("NXDOMAIN through a CNAME: the CNAME's TTL below the SOA's",
     reply(dns.rcode.NXDOMAIN, answer=("portal.isp.test. 30 CNAME gone.isp.test.",),
           authority=(SOA.format(ttl=3600, minimum=600),)), b"max-age=30"),
    ("NXDOMAIN through a CNAME without SOA",
     reply(dns.rcode.NXDOMAIN, answer=("portal.isp.test. 3600 CNAME gone.isp.test.",)), b"max-age=0"),
    ("NXDOMAIN without SOA", reply(dns.rcode.NXDOMAIN), b"max-age=0"),
    ("NODATA without SOA", reply(), b"max-age=0"),
    ("SERVFAIL", reply(dns.rcode.SERVFAIL), b"no-store"),
    ("SERVFAIL with a SOA", reply(dns.rcode.SERVFAIL, authority=(SOA.format(ttl=900, minimum=120),)), b"no-store"),
    ("REFUSED", reply(dns.rcode.REFUSED), b"no-store"),
    ("not a DNS message", b"\x00\x01garbage", b"no-store"),
]


@pytest.mark.parametrize(("wire", "expected"), [(w, e) for _, w, e in CACHE_CONTROL],
                         ids=[name for name, _, _ in CACHE_CONTROL])
def test_cache_control(wire: bytes, expected: bytes) -> None:
    assert cache_control(wire) == expected


def test_response_headers() -> None:
    wire = reply(answer=("portal.isp.test. 300 A 198.18.0.10",))
    assert response_headers(wire) == [(b":status", b"200"), (b"content-type", b"application/dns-message"),
                                      (b"content-length", str(len(wire)).encode()),
                                      (b"cache-control", b"max-age=300")]


@pytest.mark.parametrize("status", [400, 404, 405, 413, 414, 415])
def test_error_headers(status: int) -> None:
    headers = dict(error_headers(status, b"why\n"))
    assert headers[b":status"] == str(status).encode()
    assert headers[b"content-length"] == b"4"
    assert headers[b"content-type"].startswith(b"text/plain")
    assert (b"allow" in headers) == (status == 405)  # RFC 9110 §15.5.6: a 405 lists the methods
    if status == 405:
        assert headers[b"allow"] == b"GET, POST"
