"""Mail authentication: SPF (RFC 7208), DKIM (RFC 6376) and DMARC (RFC 7489) checks of inbound
mail, recorded in an Authentication-Results header (RFC 8601), and DKIM signing of outbound mail.

SPF is pyspf's, DKIM dkimpy's; DMARC is ``ispd.mail.dmarc`` (see there why). What is ours besides:
their DNS goes to ``[mail] resolver`` (ispd's own resolver, when pointed at it) through one
dnspython resolver, and the policy: a DMARC failure under ``p=reject`` is refused at the end of
DATA, under ``p=quarantine`` delivered to the Junk folder, when ``dmarc_enforcement`` says so.
Authentication-Results headers that claim to be ours are removed from what arrives (RFC 8601
§5: a sender could forge them).

Everything here blocks (DNS, RSA): the service runs it in an executor. pyspf looks names up
through a module-level function; ``use_for_spf`` points it at ours, once per process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import dkim
import dns.exception
import dns.resolver
import spf

from ispd.configtypes import SocketAddress
from ispd.mail.dmarc import DNSTemporaryError, evaluate

_TIMEOUT = 5.0


class AuthDNS:
    """Synchronous lookups for the libraries, against one server (or /etc/resolv.conf)."""

    def __init__(self, server: SocketAddress | None, timeout: float = _TIMEOUT) -> None:
        self.resolver = dns.resolver.Resolver(configure=server is None)
        if server is not None:
            self.resolver.nameservers = [server.host]
            self.resolver.port = server.port
        self.resolver.lifetime = timeout

    def _texts(self, name: str) -> list[bytes]:
        try:
            answer = self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DNSTemporaryError(str(exc)) from None
        return [b"".join(record.strings) for record in answer]

    def txt(self, name: bytes, timeout: float = _TIMEOUT) -> bytes | None:
        """dkimpy's ``dnsfunc`` (bytes in, bytes out): the first TXT record, or None."""
        texts = self._texts(name.decode("ascii", errors="replace"))
        return texts[0] if texts else None

    def texts(self, name: str) -> list[str]:
        """Every TXT record at ``name``, as text (DMARC's lookup)."""
        return [t.decode("utf-8", errors="replace") for t in self._texts(name)]

    def spf_lookup(self, name: str, qtype: str, tcpfallback: bool = True, timeout: float = 30) -> list[Any]:
        """pyspf's ``DNSLookup``: [((name, type), value)] as its dnspython backend gives them."""
        found: list[Any] = []
        try:
            answer = self.resolver.resolve(name, qtype)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return found
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise spf.TempError(f"DNS {exc}") from None
        for rdata in answer:
            value: Any
            if qtype in ("A", "AAAA"):
                value = rdata.address
            elif qtype == "MX":
                value = (rdata.preference, rdata.exchange)
            elif qtype == "PTR":
                value = rdata.target.to_text(True)
            elif qtype in ("TXT", "SPF"):
                value = rdata.strings
            else:
                continue
            found.append(((name, qtype), value))
        return found

    def use_for_spf(self) -> None:
        spf.DNSLookup = self.spf_lookup


@dataclass(frozen=True, slots=True)
class Verdict:
    header: str  # "Authentication-Results: ..." without the line end
    spf: str
    dkim: str
    dmarc: str  # pass, fail, none, temperror, permerror
    dmarc_policy: str  # what the From domain publishes: none, quarantine, reject ("" without a record)
    from_domain: str


_MAX_SIGNATURES = 5  # verified per message: more is a denial-of-service attempt, not mail


def header_end(message: bytes) -> tuple[int, int] | None:
    """Where the empty line that ends the header section begins and ends (the first
    ``\r?\n\r?\n``), or None. Found with bytes.find in a window that grows fourfold, so that
    the cost is about where the header section ends: that regex's search took 1.2 s of the event
    loop over a 25 MB message without an empty line, and a plain find of the form a message does
    not use (LF LF in CRLF mail) would read every message to its end."""
    window = 65536
    while True:
        limit = min(len(message), window)
        first = message.find(b"\n\n", 0, limit)
        crlf = message.find(b"\n\r\n", 0, limit if first < 0 else first + 2)
        if first >= 0 or crlf >= 0:
            break
        if limit == len(message):
            return None
        window *= 4
    if crlf >= 0 and (first < 0 or crlf < first):
        first, end = crlf, crlf + 3
    else:
        end = first + 2
    return (first - 1 if first and message[first - 1] == 0x0D else first), end


def header_section(message: bytes) -> bytes:
    span = header_end(message)
    return message[:span[0]] if span is not None else message


def verify_dkim(message: bytes, dns_lookup: AuthDNS) -> tuple[str, list[str]]:
    """(the result for the header, the d= of every signature that verified)."""
    count = len(re.findall(rb"(?im)^dkim-signature:", header_section(message)))
    if count == 0:
        return "none", []
    passed: list[str] = []
    temporary = False
    for index in range(min(count, _MAX_SIGNATURES)):
        verifier = dkim.DKIM(message)
        try:
            if verifier.verify(idx=index, dnsfunc=dns_lookup.txt):
                passed.append(verifier.domain.decode("ascii", errors="replace").lower())
        except DNSTemporaryError:
            temporary = True
        except (dkim.DKIMException, ValueError, IndexError):
            continue  # a malformed signature fails; the others still count
    if passed:
        return "pass", passed
    return ("temperror" if temporary else "fail"), []


def _spf(client_ip: str, mail_from: str, helo: str) -> tuple[str, str]:
    """(result, the domain checked)."""
    sender = "" if mail_from == "<>" else mail_from
    domain = sender.rpartition("@")[2] if sender else helo
    try:
        result, _ = spf.check2(client_ip, sender, helo)
    except Exception:  # pyspf raises on addresses it cannot parse
        return "permerror", domain
    return str(result or "none"), domain.lower()


def check_inbound(message: bytes, *, client_ip: str, mail_from: str, helo: str, authserv_id: str,
                  dns_lookup: AuthDNS) -> Verdict:
    """SPF of the client for MAIL FROM (or HELO), the DKIM signatures, DMARC of the From
    domain(s); ``message`` with CRLF line ends as it came."""
    spf_result, spf_domain = _spf(client_ip, mail_from, helo)
    dkim_result, dkim_domains = verify_dkim(message, dns_lookup)
    domains = from_domains(message)
    dmarc = evaluate(domains, spf_result=spf_result, spf_domain=spf_domain, dkim_domains=dkim_domains,
                     lookup=dns_lookup.texts)
    parts = [f"spf={spf_result} smtp.mailfrom={_value(mail_from if '@' in mail_from else spf_domain)}",
             f"dkim={dkim_result}" + (f" header.d={_value(dkim_domains[0])}" if dkim_domains else ""),
             f"dmarc={dmarc.result}" + (f" (p={dmarc.policy})" if dmarc.policy else "")
             + (f" header.from={_value(dmarc.from_domain)}" if dmarc.from_domain else "")]
    header = f"Authentication-Results: {authserv_id};\r\n\t" + ";\r\n\t".join(parts)
    return Verdict(header=header, spf=spf_result, dkim=dkim_result, dmarc=dmarc.result,
                   dmarc_policy=dmarc.policy, from_domain=dmarc.from_domain)


def _value(text: str) -> str:
    # RFC 8601 pvalue: keep it to what needs no quoting (addresses and domains as they usually are).
    return re.sub(r"[^A-Za-z0-9.@_+=-]", "_", text)[:255] or "unknown"


_AUTHRES_NAME = re.compile(rb"(?i)^authentication-results[ \t]*:")
_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)")


def _authserv_id(field: bytes) -> bytes:
    """The authserv-id of an unfolded Authentication-Results field (RFC 8601 §2.2: comments and
    folding may come before it, a version after it), lowercase and unquoted."""
    value = field.split(b":", 1)[1]
    previous = None
    while previous != value:  # nested comments, innermost first
        previous, value = value, _COMMENT.sub(b" ", value)
    words = value.replace(b";", b" ; ").split()
    return words[0].strip(b'"').lower() if words else b""


def strip_our_results(message: bytes, authserv_id: str) -> bytes:
    """The message without Authentication-Results headers in our name (RFC 8601 §5), however
    the sender wrote them (folded, with comments or a version, as a mail client still reads them).
    A message without an empty line is all header section (RFC 5322 §3.5: the body is optional)."""
    span = header_end(message)
    end, separator_end = (len(message), len(message)) if span is None else span
    head, rest = message[:end], message[end:]
    if b"authentication-results" not in head.lower():
        return message  # (C speed: a header section of megabytes is rebuilt line by line below)
    newline = b"\r\n" if b"\r\n" in message[:separator_end] else b"\n"
    fields: list[list[bytes]] = []
    for line in (line.rstrip(b"\r") for line in head.split(b"\n")):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    ours = authserv_id.lower().encode()
    kept = [line for field in fields
            if not (_AUTHRES_NAME.match(field[0]) and _authserv_id(b" ".join(field)) == ours)
            for line in field]
    return newline.join(kept) + rest


@dataclass(frozen=True, slots=True)
class SigningKey:
    domain: str
    selector: str
    private_key: bytes  # PEM


SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
                  b"references", b"mime-version", b"content-type", b"content-transfer-encoding"]


def load_signing_key(domain: str, selector: str, path: Path) -> SigningKey:
    """Raises ValueError with a message for the operator when the key cannot sign."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the DKIM key {path}: {exc.strerror}") from None
    key = SigningKey(domain, selector, pem)
    try:
        sign(b"From: a@" + domain.encode() + b"\r\nSubject: t\r\n\r\nt\r\n", key)
    except dkim.DKIMException as exc:
        raise ValueError(f"the DKIM key {path} cannot sign: {exc}") from None
    return key


def sign(message: bytes, key: SigningKey) -> bytes:
    """The DKIM-Signature header (with its CRLF) to put in front of ``message``."""
    return dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private_key,  # type: ignore[no-any-return]
                     canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED_HEADERS)


# One header line: lines end at CRLF, LF or a bare CR, as the next hop may read them (a bare CR
# before "From:" would otherwise hide a header that arrives as one after line-end repair).
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n|\r|\n|$)")
_MAX_HEADER_SECTION = 1024 * 1024  # looked at for From: far more than any header block


def _headers(message: bytes) -> Iterator[tuple[bytes, list[bytes]]]:
    """Each header field: its name (lowercase) and its lines, the first without the name."""
    name: bytes | None = None
    lines: list[bytes] = []
    for match in _LINE.finditer(message, 0, min(len(message), _MAX_HEADER_SECTION)):
        line = match.group(1)
        if not line:
            break  # the end of the header section (or of the message)
        if line[:1] in (b" ", b"\t"):
            lines.append(line)
            continue
        if name is not None:
            yield name, lines
        field, colon, value = line.partition(b":")
        name, lines = (field.rstrip(b" \t").lower(), [value]) if colon else (None, [])
    if name is not None:
        yield name, lines


def from_header_values(message: bytes) -> list[str]:
    """The values of the From header(s), unfolded."""
    return [b" ".join(lines).decode("utf-8", errors="replace") for name, lines in _headers(message) if name == b"from"]


# Two line ends in a row that are not one CRLF: the empty line that ends the header section
# (``_headers`` takes CR, LF and CRLF each as a line end).
_EMPTY_LINE = (b"\n\n", b"\r\r", b"\n\r")
_RECEIVED_FIELD = re.compile(rb"[\r\n]received[ \t]*:")


def received_headers(message: bytes) -> int:
    """How many Received fields the message has: the hops it made. Counted as ``_headers`` reads
    fields, but in C (a lowercase copy, a few finds, one regex) rather than line by line: it
    runs on the event loop for every message, and a megabyte of short header lines held the
    loop (DNS, DHCP and RADIUS with it) for a third of a second."""
    head = message[:_MAX_HEADER_SECTION]
    if head[:1] in (b"\r", b"\n"):
        return 0  # no header section at all
    ends = [found for found in (head.find(empty) for empty in _EMPTY_LINE) if found >= 0]
    if ends:
        head = head[:min(ends) + 1]
    return len(_RECEIVED_FIELD.findall(b"\n" + head.lower()))


def header_section_read(message: bytes) -> bool:
    """Whether the header section ends within what is read for From (``_MAX_HEADER_SECTION``):
    a From past it would be seen by the recipient's mail client and by nothing here (neither
    DMARC nor submission's check of the author)."""
    if len(message) <= _MAX_HEADER_SECTION:
        return True
    # The empty line may begin at the first byte past it: the fields, From among them, were read.
    head = message[:_MAX_HEADER_SECTION + 1]
    return head[:1] in (b"\r", b"\n") or any(empty in head for empty in _EMPTY_LINE)


def header_names(message: bytes) -> set[str]:
    """The names of the header fields present, lowercase."""
    return {name.decode("ascii", errors="replace") for name, _ in _headers(message)}


def _a_label(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _address(text: str) -> str | None:
    """An address as the header parser gave it, its local part unquoted ("bob" is bob) and its
    domain lowercase (IDNs as A-labels); None when it has no local part or no domain."""
    local, at, domain = text.rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    domain = domain.strip().rstrip(".")
    if not at or not local or not domain:
        return None
    return f"{local}@{_a_label(domain.lower())}"


def _parsed(value: str) -> list[str | None]:
    """Each address of one From value, in RFC 5322's reading (comments, quoted local parts and
    spaces around "@" taken as a mail client takes them); None for one with an "@" that is not
    an address, or for a value with no address at all. Words without "@" are left out: what
    the parser makes of an unquoted comma or bracket in a display name ("Smith, Alice <...>",
    as scripts write them) names no mailbox anyone could be impersonated by."""
    found = [_address(address) for _, address in getaddresses([value]) if "@" in address]
    return found or [None]


def from_addresses(message: bytes) -> list[str]:
    """The addresses in the From header(s) that read as addresses."""
    return [address for value in from_header_values(message) for address in _parsed(value) if address is not None]


def unreadable_from(message: bytes) -> str | None:
    """The first From value with something that does not read as an address (empty, a group,
    garbage), or None."""
    return next((value.strip() for value in from_header_values(message) if None in _parsed(value)), None)


def from_domains(message: bytes) -> list[str]:
    """The domains of the addresses in the From header(s)."""
    return [address.rpartition("@")[2] for address in from_addresses(message)]


def from_domain(message: bytes) -> str | None:
    """The domain of the first From address, or None."""
    domains = from_domains(message)
    return domains[0] if domains else None
