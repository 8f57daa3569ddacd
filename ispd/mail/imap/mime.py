"""A message's MIME structure from its bytes, for BODYSTRUCTURE and BODY[1.2] (RFC 3501
§6.4.5, §7.4.2), pure.

Parts are found in the raw bytes (boundary lines of each multipart, RFC 2046 §5.1.1), so that
BODY[1.2] is exactly the octets between them, and sizes and line counts are those IMAP clients
check. Header fields are read with the email package. A part that does not parse as MIME says
what it is as text/plain, as RFC 2045 §5.2 prescribes for a missing Content-Type.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import quote_from_bytes

from ispd.mail.imap.response import astring, nstring, split_message

MAX_DEPTH = 20  # nested multiparts: more is an attack, not a message
MAX_PARTS = 1000


@dataclass
class Part:
    header: bytes  # with its blank line
    body: bytes
    fields: Message
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # the embedded message of a message/rfc822 part

    @property
    def maintype(self) -> str:
        return self.fields.get_content_maintype()

    @property
    def subtype(self) -> str:
        return self.fields.get_content_subtype()


def _fields(header: bytes) -> Message:
    # Read as UTF-8: parsed as bytes, each 8-bit byte of a raw UTF-8 (RFC 6532) file name or
    # description came out as a U+FFFD of its own.
    return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(header.decode("utf-8", "replace"))


def parse(data: bytes, depth: int = 0, budget: list[int] | None = None, *, digest: bool = False) -> Part:
    """The structure of a message (CRLF line ends); ``digest``: a part of a multipart/digest,
    whose parts are messages unless they say otherwise (RFC 2046 §5.1.5)."""
    budget = budget if budget is not None else [MAX_PARTS]
    header, body = split_message(data)
    part = Part(header, body, _fields(header))
    if digest:
        part.fields.set_default_type("message/rfc822")
    budget[0] -= 1
    if depth >= MAX_DEPTH or budget[0] <= 0:
        return part
    if part.maintype == "multipart":
        boundary = part.fields.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            for raw in _split(body, boundary.encode("utf-8", "replace")):
                child = parse(raw, depth + 1, budget, digest=part.subtype == "digest")
                part.children.append(child)
    elif part.maintype == "message" and part.subtype == "rfc822":
        part.message = parse(body, depth + 1, budget)
    return part


def _split(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between "--boundary" lines, without the CRLF that belongs to the delimiter."""
    delimiter = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|$)")
    parts: list[bytes] = []
    start = None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start:match.start()])
        if match.group(1):  # the close delimiter
            return parts
        start = match.end()
    if start is not None:
        parts.append(body[start:])  # no close delimiter: take what is there
    return parts


def find(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part a section's numbers name (RFC 3501 §6.4.5)."""
    part = root
    for number in numbers:
        if part.message is not None and not part.children:
            part = part.message  # a message/rfc822's parts are its message's
        if part.children:
            if number > len(part.children):
                return None
            part = part.children[number - 1]
        elif number == 1:
            continue  # a single-part message (or part) has one part: itself
        else:
            return None
    return part


def _params(fields: Message, header: str = "content-type") -> bytes:
    params = fields.get_params(header=header)
    if not params or len(params) < 2:
        return b"NIL"
    pairs = []
    for key, value in params[1:]:
        name, text = key, str(value)
        if isinstance(value, tuple):
            # RFC 2231 (filename*=UTF-8''%E2%82%AC.pdf, continuations joined): passed on in
            # that form, as Dovecot does - IMAP strings are ASCII, and clients decode it.
            charset, language, raw = value
            encoded = quote_from_bytes(str(raw).encode("latin-1", "replace"), safe=_ATTRIBUTE_CHARS)
            name, text = key + "*", f"{charset or ''}'{language or ''}'{encoded}"
        pairs.append(astring(name.upper().encode("utf-8", "replace")) + b" " + astring(text.encode("utf-8", "replace")))
    return b"(" + b" ".join(pairs) + b")" if pairs else b"NIL"


_ATTRIBUTE_CHARS = "!#$&+-.^_`|~"  # RFC 2231 §7 attribute-char, besides letters and digits


def _field(fields: Message, name: str) -> bytes:
    value = fields.get(name)
    return nstring(" ".join(str(value).split()).encode("utf-8", "replace")) if value is not None else b"NIL"


def _disposition(fields: Message) -> bytes:
    value = fields.get("content-disposition")
    if value is None:
        return b"NIL"
    kind = str(value).split(";", 1)[0].strip().encode("utf-8", "replace") or b"attachment"
    return b"(" + astring(kind) + b" " + _params(fields, "content-disposition") + b")"


def structure(part: Part, envelope: object, *, extensible: bool) -> bytes:
    """BODYSTRUCTURE (``extensible``) or BODY of a part; ``envelope(header)`` gives ENVELOPE."""
    fields = part.fields
    if part.children:
        inner = b"".join(structure(child, envelope, extensible=extensible) for child in part.children)
        out = inner + b" " + astring(part.subtype.upper().encode())
        if extensible:
            out += b" " + _params(fields) + b" " + _disposition(fields) + b" " + _field(fields, "content-language") \
                + b" " + _field(fields, "content-location")
        return b"(" + out + b")"
    maintype = part.maintype if part.maintype != "multipart" else "text"
    subtype = part.subtype if part.maintype != "multipart" else "plain"
    encoding = str(fields.get("content-transfer-encoding", "7BIT")).strip().upper().encode() or b"7BIT"
    params = _params(fields)
    if params == b"NIL" and maintype == "text":
        params = b'("CHARSET" "us-ascii")'
    out = b" ".join([astring(maintype.upper().encode()), astring(subtype.upper().encode()), params,
                     _field(fields, "content-id"), _field(fields, "content-description"), astring(encoding),
                     b"%d" % len(part.body)])
    if part.message is not None:
        out += b" " + envelope(part.message.header)  # type: ignore[operator]
        out += b" " + structure(part.message, envelope, extensible=extensible)
        out += b" %d" % part.body.count(b"\r\n")
    elif maintype == "text":
        out += b" %d" % part.body.count(b"\r\n")
    if extensible:
        out += b" " + _field(fields, "content-md5") + b" " + _disposition(fields) + b" " \
            + _field(fields, "content-language") + b" " + _field(fields, "content-location")
    return b"(" + out + b")"
