"""Admin commands for the DNS caches, served over the control socket (``ispd/control.py``):
``ispd dns cache dump`` and ``ispd dns cache flush``, after Unbound's ``dump_cache``, ``flush``,
``flush_type``, ``flush_zone`` and ``flush_all``.

- ``dns.cache.flush`` drops what both caches hold for a name: its RRsets and negative entries
  (RRset cache) and the finished answers to questions about it (answer cache); with ``zone``
  everything at and below the name; with ``type`` only that type's RRset, NODATA entry and
  answers (an NXDOMAIN for the name stays, as with Unbound's ``flush_type``); with ``all``
  everything. Answers to *other* names whose CNAME chain passed through the name stay until
  they expire (flush their names, or the zone). The validator's NSEC records kept for RFC 8198
  go too, those of the name's zone and below (all of them with ``all``): else they would go on
  denying the flushed names without asking. The result counts what was dropped.
- ``dns.cache.dump`` streams the live entries (not those expired and kept only for serve-stale)
  in insertion order, optionally only a name and what is below it: RRsets as zone-file lines
  with their remaining TTL (``name TTL IN TYPE rdata``), negative entries as comments
  (``; NXDOMAIN name TTL``, ``; NODATA name TYPE TTL``), then the answer cache as comments
  (``; answer name CLASS TYPE RCODE TTL``), and a count at the end. ``json``: one JSON object
  per line instead (``kind`` rrset, nxdomain, nodata or answer).

The dump works from a snapshot of the cache's keys (a list of references: about 10 ms per
million entries) and looks each entry up again when its turn comes, in batches of
``DUMP_BATCH`` keys, so the event loop serves queries between batches and entries stored or
evicted meanwhile cannot break the iteration. A flush that must look at every key (a name's
RRsets of every type, a zone) works the same way, ``FLUSH_BATCH`` keys a step: in one go it held
every query for 0.8 s with 240,000 entries on the lab machine.

A NODATA entry's type is only in its key, so the RRset cache is walked by key (``snapshot_keys``,
``entry``, ``discard``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ispd.control import CommandError, ControlCommands
from ispd.dns.aggressive import NsecIndex
from ispd.dns.cache import (
    NXDOMAIN_KEY,
    VARIANT_AD,
    VARIANT_CD,
    VARIANT_DNS64,
    VARIANT_DO,
    VARIANT_SCOPES,
    AnswerCache,
    NegativeEntry,
    RRsetCache,
)
from ispd.dns.wire import RCode, RRType, is_subdomain, name_from_text, name_to_text, type_text

DUMP_BATCH = 1000  # cache keys looked at between two turns of the event loop
FLUSH_BATCH = 5000  # the same in a flush, which does less with each key
# What an answer's key variant says of the queries it is for: their DNSSEC bits, a [dns.dns64]
# client's, and the policy scopes of its client's view (scopeN: the Nth different set of plans
# and clients that [[dns.policy_zone]] entries are limited to, in their order).
_QUERY_BITS = (("do", VARIANT_DO), ("ad", VARIANT_AD), ("cd", VARIANT_CD), ("dns64", VARIANT_DNS64),
               *((f"scope{number}", bit) for number, bit in enumerate(VARIANT_SCOPES, 1)))
_U16 = struct.Struct("!H")
_SOA_TIMERS = struct.Struct("!IIIII")
_NAME_TYPES = frozenset({RRType.NS, RRType.CNAME, RRType.DNAME, RRType.PTR, RRType.MD, RRType.MF,
                         RRType.MB, RRType.MG, RRType.MR})
_PREFERENCE_NAME_TYPES = frozenset({RRType.MX, RRType.KX, RRType.RT, RRType.AFSDB})
_CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}


# --- presentation format ----------------------------------------------------------------------

def _name_at(rdata: bytes, offset: int) -> tuple[str, int]:
    """The uncompressed name at ``offset`` in presentation form, and the offset after it."""
    end = offset
    while rdata[end]:
        end += rdata[end] + 1
    return name_to_text(rdata[offset:end + 1]), end + 1


def _character_string(data: bytes) -> str:
    out = ['"']
    for byte in data:
        if byte in (0x22, 0x5C):  # " and \
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    out.append('"')
    return "".join(out)


def _generic(rdata: bytes) -> str:
    """RFC 3597 §5: the form any type can be written in."""
    return f"\\# {len(rdata)} {rdata.hex()}" if rdata else "\\# 0"


def rdata_text(rtype: int, rdata: bytes) -> str:
    """An rdata (uncompressed wire form) in presentation format: the common types here, the rest
    through dnslib, and the RFC 3597 generic form for what neither knows or cannot parse."""
    try:
        if rtype == RRType.A and len(rdata) == 4:
            return socket.inet_ntop(socket.AF_INET, rdata)
        if rtype == RRType.AAAA and len(rdata) == 16:
            return socket.inet_ntop(socket.AF_INET6, rdata)
        if rtype in _NAME_TYPES:
            name, end = _name_at(rdata, 0)
            if end == len(rdata):
                return name
        elif rtype in _PREFERENCE_NAME_TYPES:
            name, end = _name_at(rdata, 2)
            if end == len(rdata):
                return f"{_U16.unpack_from(rdata)[0]} {name}"
        elif rtype == RRType.SOA:
            mname, offset = _name_at(rdata, 0)
            rname, offset = _name_at(rdata, offset)
            if offset + _SOA_TIMERS.size == len(rdata):
                return " ".join([mname, rname, *map(str, _SOA_TIMERS.unpack_from(rdata, offset))])
        elif rtype == RRType.SRV:
            target, end = _name_at(rdata, 6)
            if end == len(rdata):
                priority, weight, port = struct.unpack_from("!HHH", rdata)
                return f"{priority} {weight} {port} {target}"
        elif rtype in (RRType.TXT, RRType.SPF):
            strings, offset = [], 0
            while offset < len(rdata):
                length = rdata[offset]
                if offset + 1 + length > len(rdata):
                    return _generic(rdata)
                strings.append(_character_string(rdata[offset + 1:offset + 1 + length]))
                offset += 1 + length
            return " ".join(strings) if strings else _generic(rdata)
        else:
            return _dnslib_text(rtype, rdata)
    except (IndexError, struct.error, ValueError, OSError):
        pass
    return _generic(rdata)


def _dnslib_text(rtype: int, rdata: bytes) -> str:
    import dnslib  # type: ignore[import-untyped]

    parser = dnslib.RDMAP.get(type_text(rtype))
    if parser is None:
        return _generic(rdata)
    try:
        buffer = dnslib.DNSBuffer(rdata)
        parsed = parser.parse(buffer, len(rdata))
        if buffer.offset != len(rdata):
            return _generic(rdata)
        return str(parsed)
    except Exception:  # dnslib raises anything from IndexError to DNSError on odd rdata
        return _generic(rdata)


def class_text(rclass: int) -> str:
    return _CLASSES.get(rclass, f"CLASS{rclass}")


def _rcode_text(rcode: int) -> str:
    try:
        return RCode(rcode).name
    except ValueError:
        return f"RCODE{rcode}"


def _parse_type(text: str) -> int:
    from ispd.dns.lookup import parse_type

    try:
        return parse_type(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def parse_name_argument(value: Any) -> bytes:
    """A command's domain name argument, or ``CommandError`` saying what is wrong with it."""
    if not isinstance(value, str):
        raise CommandError("the name must be text, e.g. www.example.com")
    if not value.strip():
        # name_from_text reads "" as the root: a script's unset variable would make a negative
        # trust anchor of the root, DNSSEC validation off for every name, or flush the caches.
        raise CommandError('the name is empty: give a domain, e.g. www.example.com ("." is the root)')
    try:
        return name_from_text(value)
    except ValueError as exc:
        raise CommandError(f"{value!r} is not a domain name: {exc}") from None


# --- the commands ---------------------------------------------------------------------------------

class DNSCacheAdmin:
    """``dns.cache.flush`` and ``dns.cache.dump`` over one service's two caches."""

    def __init__(self, rrsets: RRsetCache, answers: AnswerCache, clock: Callable[[], float], *,
                 processes: int = 1, nsec_index: Callable[[], NsecIndex | None] = lambda: None) -> None:
        self.rrsets = rrsets
        self.answers = answers
        # The validator's RFC 8198 index of the moment (a reload makes a new validator), or None.
        self.nsec_index = nsec_index
        self.clock = clock  # the caches' clock (monotonic)
        self.processes = processes  # [dns] processes: the dump is of the first's caches only

    def register(self, commands: ControlCommands,
                 flush: Callable[[dict[str, Any]], Awaitable[Any]] | None = None) -> Callable[[], None]:
        """Offer the commands (``flush`` in place of ``flush_command``: it flushes every process's
        caches); the returned callable takes them back."""
        undo = [commands.register("dns.cache.flush", flush or self.flush_command),
                commands.register_stream("dns.cache.dump", self.dump_command)]

        def unregister() -> None:
            for take_back in undo:
                take_back()

        return unregister

    # --- flush

    async def flush_command(self, args: dict[str, Any]) -> dict[str, int]:
        """args: ``{"all": true}`` or ``{"name": "www.example.com", "zone": false, "type": "A"}``."""
        if args.get("all"):
            if args.get("name") is not None or args.get("type") is not None:
                raise CommandError("give either a name or all, not both")
            return self.flush_all()
        if args.get("name") is None:
            raise CommandError("which name? (or all, to empty the caches)")
        name = parse_name_argument(args["name"])
        rtype = _parse_type(str(args["type"])) if args.get("type") is not None else None
        subtree = bool(args.get("zone"))
        if rtype is not None and not subtree:
            return self.flush(name, rtype=rtype)
        return await self.flush_stepwise(name, subtree=subtree, rtype=rtype)

    def flush_all(self) -> dict[str, int]:
        dropped = {"rrsets": len(self.rrsets), "answers": len(self.answers)}
        self.rrsets.clear()
        self.answers.clear()
        self._forget_proofs(None)
        return dropped

    def flush(self, name: bytes, *, rtype: int) -> dict[str, int]:
        """Drop the ``rtype`` RRset, NODATA entry and answers of ``name``: their keys are known, so
        no scan of the caches (``flush_stepwise`` does the others); how many entries each
        cache dropped."""
        self._forget_proofs(name)
        qtype = _U16.pack(rtype)
        answers = sum(self.answers.discard(name + qtype + _U16.pack(c)) for c in _CLASSES)  # (variants too)
        return {"rrsets": int(self.rrsets.discard((name, rtype))), "answers": answers}

    def _forget_proofs(self, name: bytes | None) -> None:
        """The NSEC records kept for aggressive negative answers (RFC 8198) of the zone ``name``
        is in and below it go too: kept, they would deny the flushed names without asking, and
        the flush is for the next query to go upstream."""
        index = self.nsec_index()
        if index is not None:
            index.forget(name)

    async def flush_stepwise(self, name: bytes, *, subtree: bool = False, rtype: int | None = None) -> dict[str, int]:
        """``flush``, its scan of the caches' keys ``FLUSH_BATCH`` at a time with the event loop
        let run between (on snapshots of the keys: what is stored meanwhile stays)."""
        self._forget_proofs(name)
        qtype = _U16.pack(rtype) if rtype is not None else None

        def wanted(owner: bytes) -> bool:
            return owner == name or (subtree and is_subdomain(owner, name))

        rrsets = 0
        keys: list[Any] = self.rrsets.snapshot_keys()
        for start in range(0, len(keys), FLUSH_BATCH):
            rrsets += sum(self.rrsets.discard(key) for key in keys[start:start + FLUSH_BATCH]
                          if (rtype is None or key[1] == rtype) and wanted(key[0]))
            await asyncio.sleep(0)
        answers = 0
        # An answer's key: the question (name, type, class), and a variant's one byte of bits more.
        for table, cut in ((self.answers.entries, 4), (self.answers.variants, 5)):
            keys = list(table)
            for start in range(0, len(keys), FLUSH_BATCH):
                answers += self.answers.drop([key for key in keys[start:start + FLUSH_BATCH]
                                              if (qtype is None or key[-cut:2 - cut] == qtype) and wanted(key[:-cut])])
                await asyncio.sleep(0)
        return {"rrsets": rrsets, "answers": answers}

    # --- dump

    def dump_command(self, args: dict[str, Any]) -> Iterator[list[str]]:
        """args: ``{"name": "example.com", "json": false}``, both optional."""
        zone = parse_name_argument(args["name"]) if args.get("name") is not None else None
        return self.dump(zone, as_json=bool(args.get("json")))

    def dump(self, zone: bytes | None = None, *, as_json: bool = False) -> Iterator[list[str]]:
        """The dump in batches of lines, one batch per ``DUMP_BATCH`` keys looked at."""
        rrsets, records, negatives, answers, expired = 0, 0, 0, 0, 0
        if not as_json:
            scope = f" of {name_to_text(zone)} and below" if zone is not None else ""
            head = [f"; ispd DNS cache dump{scope}"]
            if self.processes > 1:
                head.append(f"; of the main process only: each of the {self.processes} DNS processes has caches "
                            "of its own")
            yield [*head, "; RRsets and negative answers (RRset cache)"]
        keys = self.rrsets.snapshot_keys()
        out: list[str] = []
        now = self.clock()
        for i, key in enumerate(keys):
            if i % DUMP_BATCH == 0 and i:
                yield out
                out, now = [], self.clock()
            if zone is not None and not is_subdomain(key[0], zone):
                continue
            entry = self.rrsets.entry(key)
            if entry is None:
                continue  # evicted or flushed since the snapshot
            ttl = int(entry.expires_at - now)
            if ttl <= 0:
                expired += 1
                continue
            if isinstance(entry, NegativeEntry):
                negatives += 1
                out.append(_negative_line(entry.name, key[1], ttl, as_json))
                continue
            rrsets += 1
            records += len(entry.rdatas)
            owner, type_name = name_to_text(entry.name), type_text(entry.rtype)
            texts = [rdata_text(entry.rtype, rdata) for rdata in entry.rdatas]
            if as_json:
                out.append(json.dumps({"kind": "rrset", "name": owner, "type": type_name, "ttl": ttl,
                                       "trust": entry.trust.name.lower(), "rdata": texts}))
            else:
                out.extend(f"{owner} {ttl} IN {type_name} {text}" for text in texts)
        yield out
        out = [] if as_json else ["; answers (the answer cache: replies served as they are)"]
        # Plain answers, then those kept apart for queries with DNSSEC bits (DO, AD, CD) or from
        # [dns.dns64] clients or clients with a view of the policy.
        # (Snapshots of the keys, as of the RRset cache's: no object made per key, which with
        # hundreds of thousands of answers held every query for a tenth of a second.)
        snapshots = [(table, suffix, list(table))
                     for table, suffix in ((self.answers.entries, 0), (self.answers.variants, 1))]
        now = self.clock()
        i = 0
        for table, suffix, akeys in snapshots:
            for akey in akeys:
                if i % DUMP_BATCH == 0 and i:
                    yield out
                    out, now = [], self.clock()
                i += 1
                question = akey[:len(akey) - suffix]
                qname = question[:-4]
                if zone is not None and not is_subdomain(qname, zone):
                    continue
                answer = table.get(akey)
                if answer is None:
                    continue
                ttl = int(answer.expires_at - now)
                if ttl <= 0:
                    expired += 1
                    continue
                answers += 1
                qtype, qclass = struct.unpack("!HH", question[-4:])
                bits = [name for name, bit in _QUERY_BITS if suffix and akey[-1] & bit]
                fields = (name_to_text(qname), class_text(qclass), type_text(qtype),
                          _rcode_text(answer.rcode_flags & 0xF), ttl)
                if as_json:
                    extra = {"query_bits": bits} if bits else {}
                    out.append(json.dumps(dict(zip(("name", "class", "type", "rcode", "ttl"), fields, strict=True),
                                               kind="answer", **extra)))
                else:
                    out.append("; answer {} {} {} {} {}".format(*fields) + "".join(f" +{bit}" for bit in bits))
        if not as_json:
            out.append(f"; {rrsets} RRsets ({records} records), {negatives} negative entries, {answers} answers"
                       + (f"; {expired} expired entries (kept for serve-stale) not shown" if expired else ""))
        yield out


def _negative_line(name: bytes, key_type: int, ttl: int, as_json: bool) -> str:
    owner = name_to_text(name)
    if key_type == NXDOMAIN_KEY:
        return json.dumps({"kind": "nxdomain", "name": owner, "ttl": ttl}) if as_json \
            else f"; NXDOMAIN {owner} {ttl}"
    type_name = type_text(key_type)
    return json.dumps({"kind": "nodata", "name": owner, "type": type_name, "ttl": ttl}) if as_json \
        else f"; NODATA {owner} {type_name} {ttl}"

