"""DNSSEC validation of the resolver's answers: the chain of trust and each step's verdict.

Theory of operation. The resolver hands every step of a resolution (an answer, a piece of a
CNAME chain, a negative answer) to ``Validator.check`` together with the zone whose servers gave
it. A step is
- secure when each RRset in it verifies (``dnssec.verify_rrset``) with the keys of its signer
  zone and those keys are secure; a wildcard expansion also needs its NSEC/NSEC3 proof that the
  name itself does not exist; a negative answer needs its SOA and denial records to verify and to
  prove the denial (``dnssec.denial``);
- insecure when the zone it comes from (the signer, or without signatures the zone that answered)
  has no secure keys because the chain of trust ends above it with a proved absence of DS, a DS
  set of algorithms or digests we do not implement, a zone under no trust anchor, or a negative
  trust anchor;
- bogus otherwise, with the RFC 8914 code that says why.

The keys of a zone (``zone_keys``) are established top-down on demand, by asking — through the
resolver, with its caches and budgets — for the zone's DS (at the parent's servers) and DNSKEY:
1. a negative trust anchor at or above the zone: insecure (RFC 7646);
2. a trust anchor for the zone: its DNSKEY set must be signed by a key the anchor names;
3. no anchor at or above: insecure;
4. otherwise the DS answer is validated with the keys of the zone it came from (the signer of the
   DS set, or for a denial the zone that gave it), which are established the same way: the parent
   insecure makes the child insecure, the parent bogus the child bogus; a secure DS set leads to
   the DNSKEY set, which must be signed by a key one of the DS records matches (RFC 4035 §5.2);
   a secure denial of the DS (NSEC, or NSEC3 with or without opt-out) makes the zone insecure.
The keys are kept per zone until the least TTL of what established them (or the signature's
expiry) runs out; a bogus verdict is kept ``bogus_ttl`` seconds (RFC 4035 §4.7 lets a validator
remember bad data to avoid hammering the servers). Concurrent questions about one zone share one
establishment.

Verdicts are written back into the RRset and negative cache entries, so a cached step costs a
lookup, not a signature check; a secure RRset's lifetime is capped by its RRSIG (RFC 4035
§5.3.3) and a bogus one's by ``bogus_ttl``. Signature windows are checked against the wall clock.

The NSEC and NSEC3 records of secure negative answers are kept (``aggressive.NsecIndex``) and answer
later questions whose names they deny without asking anyone (RFC 8198, ``synthesise``), as long
as their zone's keys are still secure.

Not here: RFC 5011 rollover of the anchors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

from ispd.dns import dnssec
from ispd.dns.aggressive import NsecIndex
from ispd.dns.cache import NegativeEntry, NegativeKind, RRsetCache, RRsetEntry, Security
from ispd.dns.dnssec import DNSKEY, EDE, Denial, DNSSECError, TrustAnchor
from ispd.dns.resolver import Outcome, Resolution, Step
from ispd.dns.wire import ROOT, RR, RCode, RRType, is_subdomain, label_count, name_to_text, rdata_name
from ispd.logs import get_logger

log = get_logger("ispd.dns.validator")

Fetch = Callable[[bytes, int], Awaitable[Resolution]]
MAX_CHAIN_DEPTH = 16  # zone cuts from a name up to its trust anchor that one question may establish
MAX_UNSIGNED_WALK = 8  # names below a signed zone whose DS is asked for an unsigned answer's zone
Trace = Callable[[str], None] | None


@dataclass(slots=True)
class ZoneKeys:
    security: Security
    keys: tuple[DNSKEY, ...]
    expires_at: float
    ede: int = -1
    why: str = ""
    # Secure: whether the name is a zone of its own (False: a name in its parent's zone, under
    # its keys). Insecure: whether for a reason signed data or the operator gives - a delegation
    # its parent proves has no DS, NSEC3 opt-out, a negative trust anchor - rather than a name
    # its parent says does not exist (which a forward or stub zone may serve, and a forger too).
    cut: bool = True


@dataclass(slots=True)
class Verdict:
    security: Security
    ede: int = -1
    why: str = ""
    ttl: int | None = None  # a secure RRset's cap (RFC 4035 §5.3.3)
    signer: bytes = b""  # a secure denial's zone
    proof: tuple[RR, ...] = ()  # a secure denial's NSEC/NSEC3 records, verified


@dataclass(slots=True)
class ValidationStats:
    """Counters for the metrics collector: steps by verdict, bogus ones by RFC 8914 code."""

    verdicts: dict[Security, int] = field(default_factory=lambda: dict.fromkeys(
        (Security.SECURE, Security.INSECURE, Security.BOGUS), 0))
    failures: dict[int, int] = field(default_factory=dict)
    synthesised: int = 0  # negative answers from cached NSEC records (RFC 8198)


_SECURE = Verdict(Security.SECURE)
_INSECURE = Verdict(Security.INSECURE)


class Validator:
    def __init__(self, anchors: Iterable[TrustAnchor], fetch: Fetch, cache: RRsetCache,
                 clock: Callable[[], float], *, negative_anchors: Iterable[bytes] = (),
                 bogus_ttl: int = 60, max_key_ttl: int = 86400, aggressive_nsec: bool = True,
                 max_signature_checks: int = dnssec.MAX_SIGNATURE_CHECKS,
                 max_nsec3_calculations: int = dnssec.MAX_NSEC3_CALCULATIONS,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.anchors = {anchor.zone: anchor for anchor in anchors}
        # RFC 7646: name -> when it lapses (on the ``clock``); the config's never do.
        self.negative_anchors: dict[bytes, float] = dict.fromkeys(negative_anchors, float("inf"))
        self.fetch = fetch
        self.cache = cache
        self.clock = clock
        self.wall_clock = wall_clock
        self.bogus_ttl = bogus_ttl
        self.max_key_ttl = max_key_ttl
        self.max_checks = max_signature_checks  # per RRset (KeyTrap, CVE-2023-50387)
        self.max_nsec3 = max_nsec3_calculations  # per proof (CVE-2023-50868)
        self.zones: dict[bytes, ZoneKeys] = {}
        self.nsec_index = NsecIndex() if aggressive_nsec else None
        self.stats = ValidationStats()
        # Set once an anchor is first needed: RFC 5011 refreshes start then, so a resolver nobody
        # asks never reaches out to the root on its own.
        self.anchor_used = asyncio.Event()
        self._pending: dict[bytes, asyncio.Future[ZoneKeys]] = {}

    # --- configuration at run time ---------------------------------------------------------

    def set_anchor(self, anchor: TrustAnchor) -> bool:
        """Validate ``anchor.zone`` from these keys from now on (an RFC 5011 update). What was
        decided with a key the new anchor no longer trusts is forgotten (True: the caller drops
        its answers too); a key newly trusted, or the tracked form of the same keys, changes no
        verdict already taken."""
        old = self.anchors.get(anchor.zone)
        self.anchors[anchor.zone] = anchor
        established = self.zones.get(anchor.zone)
        if old is None or established is None or established.security != Security.SECURE:
            self.zones.pop(anchor.zone, None)  # established again, from the new anchor, when next needed
            return False
        if any(old.trusts(key) and not anchor.trusts(key) for key in established.keys):
            self.forget(anchor.zone)
            return True
        return False

    def add_negative_anchor(self, name: bytes, until: float = float("inf")) -> None:
        """Stop validating ``name`` and below until ``until``; verdicts taken there are forgotten."""
        self.negative_anchors[name] = until
        self.forget(name)

    def remove_negative_anchor(self, name: bytes) -> bool:
        if self.negative_anchors.pop(name, None) is None:
            return False
        self.forget(name)
        return True

    def live_negative_anchors(self) -> dict[bytes, float]:
        """The negative trust anchors in force, lapsed ones dropped (and their subtrees revalidated)."""
        now = self.clock()
        for name in [n for n, until in self.negative_anchors.items() if until <= now]:
            self.remove_negative_anchor(name)
        return dict(self.negative_anchors)

    def forget(self, zone: bytes | None = None) -> None:
        """Forget the keys of ``zone`` and below (all zones without one), and the verdicts the
        RRset cache holds for what they signed, so the next question is validated afresh."""
        if zone is None:
            self.zones.clear()
        else:
            for name in [z for z in self.zones if is_subdomain(z, zone)]:
                del self.zones[name]
        for entry in self.cache.entries():
            if zone is None or is_subdomain(entry.name, zone):
                entry.security, entry.ede = Security.UNCHECKED, -1

    def under_negative_anchor(self, name: bytes) -> float | None:
        """When the negative trust anchor over ``name`` lapses, or None when none covers it. One
        found lapsed is dropped, and what was decided under it forgotten."""
        if not self.negative_anchors:
            return None
        while True:
            until = self.negative_anchors.get(name)
            if until is not None:
                if until > self.clock():
                    return until
                self.remove_negative_anchor(name)
            if name == ROOT:
                return None
            name = name[name[0] + 1:]

    def covered_by_anchor(self, name: bytes) -> bool:
        while True:
            if name in self.anchors:
                return True
            if name == ROOT:
                return False
            name = name[name[0] + 1:]

    # --- one step of a resolution ----------------------------------------------------------

    async def check(self, outcome: Outcome, qname: bytes, qtype: int, trace: Trace = None) -> None:
        """Set ``outcome.security`` (and ``ede``) unless a verdict is already there (a cached step),
        and write the verdict into the cache entries the step came from."""
        if outcome.security != Security.UNCHECKED:
            return
        lapses = self.under_negative_anchor(qname)
        if lapses is not None:  # what is decided under it lives no longer than the anchor
            left = None if lapses == float("inf") else max(1, int(lapses - self.clock()))
            verdict = Verdict(Security.INSECURE, why="negative trust anchor", ttl=left)
        elif outcome.step in (Step.ANSWER, Step.CNAME):
            verdict = await self._check_records(outcome.records, outcome.zone, outcome.proof, qname)
        elif outcome.step in (Step.NXDOMAIN, Step.NODATA):
            # (the proof: a wildcard CNAME's before the denial needs its own, RFC 4035 §5.3.4)
            verdict = await self._check_records(outcome.records, outcome.zone, outcome.proof, qname)
            if verdict.security != Security.BOGUS:
                denied = _chain_end(qname, outcome.records)
                negative = await self._check_denial(denied, qtype, outcome.step == Step.NXDOMAIN,
                                                    outcome.soa + outcome.proof, outcome.zone)
                caps = [ttl for ttl in (verdict.ttl, negative.ttl) if ttl is not None]
                if negative.security <= verdict.security:  # equal: the denial's, which names its zone
                    verdict = negative
                if caps:  # the chain's signatures and the denial's: the first to expire
                    verdict = replace(verdict, ttl=min(caps))
        else:
            return
        outcome.security, outcome.ede = verdict.security, verdict.ede
        if verdict.ttl is not None and verdict.security != Security.BOGUS:
            # RFC 4035 §5.3.3: no longer than the signatures last (or the negative trust anchor),
            # for the client and for the answer cache as for the RRset cache; a negative answer's
            # SOA and NSEC/NSEC3 records too, and with them the negative cache entry.
            cap = verdict.ttl
            outcome.records = _capped(outcome.records, cap)
            if outcome.step in (Step.NXDOMAIN, Step.NODATA):
                outcome.soa, outcome.proof = _capped(outcome.soa, cap), _capped(outcome.proof, cap)
        self.stats.verdicts[verdict.security] += 1
        if verdict.signer and self.nsec_index is not None and outcome.soa:
            ttl = min(rr.ttl for rr in outcome.soa + outcome.proof)
            self.nsec_index.learn(verdict.signer, outcome.soa, outcome.proof, ttl, self.clock())
        if verdict.security == Security.BOGUS:
            self.stats.failures[verdict.ede] = self.stats.failures.get(verdict.ede, 0) + 1
            outcome.reason = verdict.why
            log.info("dns.dnssec.bogus", name=name_to_text(qname), qtype=qtype, ede=verdict.ede, why=verdict.why)
        if trace is not None:
            trace(f"DNSSEC: {name_to_text(qname)} is {verdict.security.name.lower()}"
                  + (f" ({verdict.why})" if verdict.why else ""))
        self._remember(outcome, qname, qtype, verdict)

    async def _check_records(self, records: list[RR], zone: bytes, proof: Iterable[RR], qname: bytes) -> Verdict:
        rrsets: dict[tuple[bytes, int], list[bytes]] = {}
        sigs: dict[tuple[bytes, int], list[dnssec.RRSIG]] = {}
        dnames: list[RR] = []
        for rr in records:
            if rr.rtype == RRType.RRSIG:
                try:
                    sig = dnssec.parse_rrsig(rr.rdata)
                except DNSSECError:
                    continue
                sigs.setdefault((rr.name, sig.type_covered), []).append(sig)
            else:
                rrsets.setdefault((rr.name, rr.rtype), []).append(rr.rdata)
                if rr.rtype == RRType.DNAME:
                    dnames.append(rr)
        worst = _SECURE
        proof = list(proof)
        for (name, rtype), rdatas in rrsets.items():
            if rtype == RRType.CNAME and (name, rtype) not in sigs and _synthesised(name, rdatas, dnames):
                continue  # RFC 6672 §5.3.1: the CNAME a signed DNAME implies carries no signature
            verdict = await self._check_rrset(name, rtype, rdatas, sigs.get((name, rtype), []), zone, proof)
            if verdict.security < worst.security:
                worst = verdict
                if verdict.security == Security.BOGUS:
                    break
            elif verdict.ttl is not None and (worst.ttl is None or verdict.ttl < worst.ttl) \
                    and worst.security == Security.SECURE:
                worst = Verdict(Security.SECURE, ttl=verdict.ttl)
        return worst

    async def _check_rrset(self, name: bytes, rtype: int, rdatas: list[bytes], sigs: list[dnssec.RRSIG],
                           zone: bytes, proof: list[RR]) -> Verdict:
        signing = await self._signing_keys([sig.signer for sig in sigs], name, zone or name, EDE.RRSIGS_MISSING,
                                           lambda: f"{name_to_text(name)} {rtype} has no signature from "
                                                   f"{name_to_text(zone or name)}", parents=rtype == RRType.DS)
        if isinstance(signing, Verdict):
            return signing
        signer, keys = signing
        now = int(self.wall_clock())
        result = dnssec.verify_rrset(name, rtype, rdatas, sigs, keys.keys, signer, now, self.max_checks)
        if not result.ok:
            return Verdict(Security.BOGUS, result.failure,
                           f"{name_to_text(name)} type {rtype}: {_failure_text(result.failure, result.exhausted)}")
        assert result.sig is not None
        if dnssec.is_expansion(name, result.sig):  # RFC 4035 §5.3.4: the name must be proved absent
            verified = await self._verified_denial_records(proof, signer, keys)
            try:
                proved = Denial.BOGUS if verified is None else dnssec.wildcard_expansion(
                    name, result.sig.labels, verified[0], dnssec.Nsec3Budget(self.max_nsec3))
            except dnssec.Nsec3Exhausted:
                return Verdict(Security.BOGUS, EDE.DNSSEC_BOGUS, f"{name_to_text(name)}: {_NSEC3_EXHAUSTED}")
            if proved == Denial.BOGUS:
                return Verdict(Security.BOGUS, EDE.NSEC_MISSING,
                               f"{name_to_text(name)}: a wildcard answer without proof that the name does not exist")
            if proved == Denial.INSECURE:
                return Verdict(Security.INSECURE, _insecure_ede(verified[0] if verified else ()),
                               why="a wildcard answer under NSEC3 opt-out or too many iterations")
        return Verdict(Security.SECURE, ttl=result.ttl_cap(now))

    async def _check_denial(self, name: bytes, qtype: int, nxdomain: bool, records: list[RR],
                            zone: bytes) -> Verdict:
        """A negative answer: its SOA and NSEC/NSEC3 records verify, and prove the denial."""
        signers = []
        for rr in records:
            if rr.rtype == RRType.RRSIG:
                try:
                    signers.append(dnssec.parse_rrsig(rr.rdata).signer)
                except DNSSECError:
                    continue
        soa_owner = next((rr.name for rr in records if rr.rtype == RRType.SOA and is_subdomain(name, rr.name)), b"")
        signing = await self._signing_keys(signers, name, zone or soa_owner or name, EDE.NSEC_MISSING,
                                           lambda: f"an unsigned denial of {name_to_text(name)} from a signed zone",
                                           parents=qtype == RRType.DS)
        if isinstance(signing, Verdict):
            return signing
        signer, keys = signing
        soa = [rr for rr in records if rr.rtype == RRType.SOA]
        now = int(self.wall_clock())
        cap: int | None = None  # RFC 4035 §5.3.3: until the first of the denial's signatures expires
        if soa:
            soa_sigs = dnssec.sigs_over(records, soa[0].name, RRType.SOA)
            result = dnssec.verify_rrset(soa[0].name, RRType.SOA, [rr.rdata for rr in soa], soa_sigs, keys.keys,
                                         signer, now, self.max_checks)
            if not result.ok:
                return Verdict(Security.BOGUS, result.failure, f"the SOA of a denial: {_failure_text(result.failure)}")
            cap = result.ttl_cap(now)
        verified = await self._verified_denial_records(records, signer, keys)
        if verified is None:
            return Verdict(Security.BOGUS, EDE.DNSSEC_BOGUS, f"a denial record of {name_to_text(name)} does not verify")
        checked, proof_cap = verified
        if proof_cap is not None:
            cap = proof_cap if cap is None else min(cap, proof_cap)
        try:
            proved = dnssec.denial(name, qtype, nxdomain, checked, dnssec.Nsec3Budget(self.max_nsec3))
        except dnssec.Nsec3Exhausted:
            return Verdict(Security.BOGUS, EDE.DNSSEC_BOGUS, f"the denial of {name_to_text(name)}: {_NSEC3_EXHAUSTED}")
        if proved == Denial.SECURE:
            return Verdict(Security.SECURE, ttl=cap, signer=signer, proof=tuple(checked))
        if proved == Denial.INSECURE:
            return Verdict(Security.INSECURE, _insecure_ede(checked), why="NSEC3 opt-out or too many iterations",
                           ttl=cap)
        return Verdict(Security.BOGUS, EDE.NSEC_MISSING,
                       f"no proof that {name_to_text(name)} {'does not exist' if nxdomain else 'has no such type'}")

    async def _signing_keys(self, signers: list[bytes], name: bytes, unsigned_zone: bytes, missing: EDE,
                            missing_why: Callable[[], str], *,
                            parents: bool = False) -> tuple[bytes, ZoneKeys] | Verdict:
        """The deepest of ``signers`` that may sign ``name`` and its secure keys, to verify with;
        or the verdict when there is nothing to verify: the signer's zone insecure or bogus, or
        no signature, which is bogus (``missing``) if ``unsigned_zone`` (where the unsigned data
        came from) is signed, and no unsigned zone it serves too is proved between them, and its
        verdict otherwise. ``parents``: the data is a DS set or its denial, the parent zone's
        own, which no child can make unsigned (and whose check is part of establishing a zone's
        keys, which the search for a child would ask for again)."""
        # A DS set and its denial are signed by the zone above (RFC 4035 §5.2): a signature of
        # the name's own zone proves nothing of them, and establishing that zone's keys is what
        # waits for this check (asking for them here would wait for itself).
        usable = [signer for signer in signers if is_subdomain(name, signer) and not (parents and signer == name)]
        if not usable:
            keys = await self.zone_keys(unsigned_zone)
            if keys.security == Security.SECURE:
                below = None if parents else await self._unsigned_zone_below(unsigned_zone, name)
                if below is not None:
                    return Verdict(below.security, below.ede, below.why)
                return Verdict(Security.BOGUS, missing, missing_why())  # (text made only when needed)
            return Verdict(keys.security, keys.ede, keys.why)
        signer = max(usable, key=label_count)
        keys = await self.zone_keys(signer)
        if keys.security != Security.SECURE:
            return Verdict(keys.security, keys.ede, keys.why)
        return signer, keys

    async def _unsigned_zone_below(self, zone: bytes, name: bytes) -> ZoneKeys | None:
        """The unsigned zone between the signed ``zone`` and ``name`` (inclusive) whose data an
        unsigned answer from ``zone``'s servers may be: servers that hold a signed zone and an
        unsigned child of it answer for the child without a referral, so the cut is looked for
        as Unbound does, by the DS of each name from the top down. Only a cut the parent's
        signed data proves (or a negative trust anchor) counts, never a name it denies: a forged
        answer for a name that does not exist must stay bogus. None: no such zone."""
        steps = label_count(name) - label_count(zone)
        for depth in range(1, min(steps, MAX_UNSIGNED_WALK) + 1):
            below = name
            for _ in range(steps - depth):
                below = below[below[0] + 1:]
            keys = await self.zone_keys(below)
            if keys.security == Security.SECURE and not keys.cut:
                continue  # a name in the signed zone: the cut, if any, is further down
            if keys.security == Security.INSECURE and keys.cut:
                return keys
            return None  # a signed zone of its own, a bogus chain, or a name denied
        return None

    async def _verified_denial_records(self, records: Iterable[RR], signer: bytes,
                                       keys: ZoneKeys) -> tuple[list[RR], int | None] | None:
        """The NSEC/NSEC3 records of ``records``, each RRset verified with ``keys``, and the least
        TTL their signatures allow (RFC 4035 §5.3.3; None without any); None when one does not
        verify (a forged proof is no proof)."""
        records = list(records)
        now = int(self.wall_clock())
        found: list[RR] = []
        cap: int | None = None
        for rr in records:
            if rr.rtype not in (RRType.NSEC, RRType.NSEC3):
                continue
            result = dnssec.verify_rrset(rr.name, rr.rtype, [rr.rdata], dnssec.sigs_over(records, rr.name, rr.rtype),
                                         keys.keys, signer, now, self.max_checks)
            if not result.ok:
                return None
            found.append(rr)
            cap = result.ttl_cap(now) if cap is None else min(cap, result.ttl_cap(now))
        return found, cap

    def synthesise(self, name: bytes, qtype: int) -> Outcome | None:
        """A secure NXDOMAIN or NODATA for (name, type) from cached NSEC records (RFC 8198), or
        None when they do not prove one."""
        index = self.nsec_index
        if index is None or not index.zones:
            return None
        # A DS set is the parent's (RFC 4035 §4.2): the child's apex NSEC, which lists no DS,
        # denies nothing about it, so the spans are the parent zone's.
        if qtype == RRType.DS:
            if name == ROOT:
                return None
            zone = index.zone_of(name[name[0] + 1:])
        else:
            zone = index.zone_of(name)
        if zone is None or self.under_negative_anchor(name) is not None:
            return None
        now = self.clock()
        keys = self.zones.get(zone)
        if keys is None or keys.expires_at <= now or keys.security != Security.SECURE:
            return None
        try:
            found = index.answer(zone, name, qtype, now, dnssec.Nsec3Budget(self.max_nsec3))
        except dnssec.Nsec3Exhausted:
            return None  # the servers are asked, and their proof is held to the same budget
        if found is None:
            return None
        self.stats.synthesised += 1
        step = Step.NXDOMAIN if found.nxdomain else Step.NODATA
        soa = [rr for rr in found.soa if rr.rtype == RRType.SOA]
        sigs = [rr for rr in found.soa if rr.rtype != RRType.SOA]
        return Outcome(step, soa=soa, proof=sigs + found.proof, zone=zone, security=Security.SECURE)

    # --- the chain of trust ----------------------------------------------------------------

    async def zone_keys(self, zone: bytes, depth: int = 0) -> ZoneKeys:
        """The keys of ``zone`` and whether they are secure (see the module comment)."""
        now = self.clock()
        known = self.zones.get(zone)
        if known is not None and known.expires_at > now:
            return known
        pending = self._pending.get(zone)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ZoneKeys] = asyncio.get_running_loop().create_future()
        self._pending[zone] = future
        try:
            found = await self._establish(zone, depth)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception:  # a bug must cost one verdict, not the service
            log.exception("dns.dnssec.failed", zone=name_to_text(zone))
            found = ZoneKeys(Security.BOGUS, (), self.clock() + 5, EDE.OTHER, "internal error")
        finally:
            self._pending.pop(zone, None)
        if len(self.zones) > 100_000:
            self.zones.clear()
        self.zones[zone] = found
        if not future.done():
            future.set_result(found)
        return found

    def _until(self, ttl: float) -> float:
        return self.clock() + max(1.0, min(ttl, self.max_key_ttl))

    def _bogus(self, ede: EDE, why: str, ttl: float | None = None) -> ZoneKeys:
        return ZoneKeys(Security.BOGUS, (), self._until(self.bogus_ttl if ttl is None else ttl), ede, why)

    async def _establish(self, zone: bytes, depth: int) -> ZoneKeys:
        lapses = self.under_negative_anchor(zone)
        if lapses is not None:
            return ZoneKeys(Security.INSECURE, (), min(lapses, self._until(self.max_key_ttl)),
                            why="negative trust anchor")
        anchor = self.anchors.get(zone)
        if anchor is not None:
            self.anchor_used.set()
            if not anchor.ds and not anchor.keys:  # RFC 5011: every trusted key revoked or gone
                return self._bogus(EDE.DNSKEY_MISSING, f"no trusted key is left for {name_to_text(zone)}")
            if not anchor.usable:
                return ZoneKeys(Security.INSECURE, (), self._until(self.max_key_ttl),
                                why="the trust anchor has no supported algorithm")
            return await self._keys_trusted_by(zone, anchor.trusts, self.max_key_ttl, "the trust anchor")
        if not self.covered_by_anchor(zone):
            return ZoneKeys(Security.INSECURE, (), self._until(self.max_key_ttl), why="no trust anchor above")
        ds = await self.fetch(zone, RRType.DS)
        if ds.rcode not in (RCode.NOERROR, RCode.NXDOMAIN):
            return self._bogus(EDE.DNSSEC_BOGUS, f"no answer for the DS of {name_to_text(zone)}: {ds.failure}",
                               ttl=5)
        records = [rr for rr in ds.answer if rr.name == zone and rr.rtype == RRType.DS]
        # The zone that holds the DS: its signer, else the SOA of a denial, else (iterating) the
        # zone whose servers answered. A forwarder's answers name no zone.
        soa_owner = next((rr.name for rr in ds.authority if rr.rtype == RRType.SOA and rr.name != zone
                          and is_subdomain(zone, rr.name)), b"")
        parent = _signer_of(ds.answer + ds.authority, zone) or soa_owner or ds.zone
        if not parent or parent == zone or not is_subdomain(zone, parent):
            return self._bogus(EDE.DNSSEC_BOGUS, f"cannot tell which zone holds the DS of {name_to_text(zone)}")
        if depth >= MAX_CHAIN_DEPTH:  # each link costs a DS and a DNSKEY question: bound the work
            return self._bogus(EDE.DNSSEC_BOGUS, f"more than {MAX_CHAIN_DEPTH} zone cuts above {name_to_text(zone)}")
        parent_keys = await self.zone_keys(parent, depth + 1)
        if parent_keys.security != Security.SECURE:
            return ZoneKeys(parent_keys.security, (), parent_keys.expires_at, parent_keys.ede, parent_keys.why)
        ttl = min((rr.ttl for rr in ds.answer + ds.authority), default=self.bogus_ttl)
        if not records:
            nxdomain = ds.rcode == RCode.NXDOMAIN
            checked = await self._check_denial(zone, RRType.DS, nxdomain, ds.authority, parent)
            if checked.security == Security.BOGUS:
                return self._bogus(EDE(checked.ede) if checked.ede in EDE._value2member_map_ else EDE.DNSSEC_BOGUS,
                                   f"the absence of a DS for {name_to_text(zone)}: {checked.why}")
            try:
                cut = checked.security != Security.SECURE or nxdomain \
                    or dnssec.shows_delegation(zone, checked.proof, dnssec.Nsec3Budget(self.max_nsec3))
            except dnssec.Nsec3Exhausted:
                return self._bogus(EDE.DNSSEC_BOGUS,
                                   f"the absence of a DS for {name_to_text(zone)}: {_NSEC3_EXHAUSTED}")
            if not cut:
                # No zone cut here: the name lies in its parent's zone, whose keys sign it.
                return ZoneKeys(Security.SECURE, parent_keys.keys, min(parent_keys.expires_at, self._until(ttl)),
                                cut=False)
            # A proved delegation without DS, or opt-out; or a name the signed parent says does
            # not exist, which only a forward or stub zone of the operator's can serve.
            ede = checked.ede if checked.security == Security.INSECURE else -1
            return ZoneKeys(Security.INSECURE, (), self._until(ttl), ede, why=f"{name_to_text(zone)} is not signed",
                            cut=not nxdomain)
        now = int(self.wall_clock())
        result = dnssec.verify_rrset(zone, RRType.DS, [rr.rdata for rr in records],
                                     dnssec.sigs_over(ds.answer, zone, RRType.DS), parent_keys.keys, parent, now,
                                     self.max_checks)
        if not result.ok:
            return self._bogus(result.failure, f"the DS of {name_to_text(zone)}: {_failure_text(result.failure)}")
        try:
            usable = dnssec.usable_ds(dnssec.parse_ds(rr.rdata) for rr in records)
        except DNSSECError:
            return self._bogus(EDE.DNSSEC_BOGUS, f"a malformed DS for {name_to_text(zone)}")
        if not usable:  # RFC 4035 §5.2: algorithms we do not implement make the zone insecure
            return ZoneKeys(Security.INSECURE, (), self._until(ttl), EDE.UNSUPPORTED_DNSKEY_ALGORITHM,
                            f"{name_to_text(zone)} uses no supported DS algorithm or digest")

        def trusted(key: DNSKEY) -> bool:
            return any(dnssec.ds_matches(zone, d, key) for d in usable)

        return await self._keys_trusted_by(zone, trusted, min(ttl, result.ttl_cap(now)), "the DS")

    async def _keys_trusted_by(self, zone: bytes, trusted: Callable[[DNSKEY], bool], ttl: float,
                               source: str) -> ZoneKeys:
        answer = await self.fetch(zone, RRType.DNSKEY)
        rdatas = [rr.rdata for rr in answer.answer if rr.name == zone and rr.rtype == RRType.DNSKEY]
        keys = dnssec.parse_dnskeys(rdatas)
        if not keys:
            return self._bogus(EDE.DNSKEY_MISSING, f"no DNSKEY for {name_to_text(zone)}"
                               + (f": {answer.failure}" if answer.failure else ""), ttl=5 if answer.failure else None)
        entry_points = [k for k in keys if k.usable and trusted(k)]
        if not entry_points:
            return self._bogus(EDE.DNSKEY_MISSING, f"no DNSKEY of {name_to_text(zone)} matches {source}")
        now = int(self.wall_clock())
        result = dnssec.verify_rrset(zone, RRType.DNSKEY, rdatas, dnssec.sigs_over(answer.answer, zone, RRType.DNSKEY),
                                     entry_points, zone, now, self.max_checks)
        if not result.ok:
            return self._bogus(result.failure,
                               f"the DNSKEY set of {name_to_text(zone)}: {_failure_text(result.failure)}")
        key_ttl = min([ttl, result.ttl_cap(now), *(rr.ttl for rr in answer.answer)])
        return ZoneKeys(Security.SECURE, tuple(k for k in keys if k.usable), self._until(key_ttl))

    # --- remembering -----------------------------------------------------------------------

    def _remember(self, outcome: Outcome, qname: bytes, qtype: int, verdict: Verdict) -> None:
        now = self.clock()
        if verdict.security == Security.BOGUS:
            ttl: float | None = self.bogus_ttl
        else:
            ttl = verdict.ttl
        entries: list[RRsetEntry | NegativeEntry] = []
        for key in dict.fromkeys((rr.name, rr.rtype) for rr in outcome.records if rr.rtype != RRType.RRSIG):
            entry = self.cache.entry(key)
            if isinstance(entry, RRsetEntry):
                entries.append(entry)
        if outcome.step in (Step.NXDOMAIN, Step.NODATA):
            denied = _chain_end(qname, outcome.records)
            kind = NegativeKind.NXDOMAIN if outcome.step == Step.NXDOMAIN else NegativeKind.NODATA
            negative = self.cache.get_negative(denied, qtype, now)
            if negative is not None and negative.kind == kind:
                entries.append(negative)
        for entry in entries:
            entry.security, entry.ede = verdict.security, verdict.ede
            if ttl is not None:
                entry.expires_at = min(entry.expires_at, now + ttl)


def _signer_of(records: Iterable[RR], name: bytes) -> bytes | None:
    """The deepest signer, above ``name``, of the RRSIGs among ``records``."""
    best: bytes | None = None
    for rr in records:
        if rr.rtype != RRType.RRSIG:
            continue
        try:
            signer = dnssec.parse_rrsig(rr.rdata).signer
        except DNSSECError:
            continue
        if signer != name and is_subdomain(name, signer) and (best is None or label_count(signer) > label_count(best)):
            best = signer
    return best


def _insecure_ede(proof: Iterable[RR]) -> int:
    """RFC 9276 §3.2: an answer insecure for its NSEC3 chain's iterations says so (EDE 27)."""
    return EDE.UNSUPPORTED_NSEC3_ITERATIONS if dnssec.nsec3_iterations_unsupported(proof) else -1


def _capped(records: list[RR], ttl: int) -> list[RR]:
    return [rr if rr.ttl <= ttl else RR(rr.name, rr.rtype, rr.rclass, ttl, rr.rdata) for rr in records]


def _chain_end(qname: bytes, records: list[RR]) -> bytes:
    """The name a step's CNAME/DNAME chain, starting at ``qname``, ends at."""
    current = qname
    for _ in range(len(records)):
        step = next((rr for rr in records if rr.rtype == RRType.CNAME and rr.name == current), None)
        if step is None:
            break
        current = rdata_name(step.rdata)
    return current


def _synthesised(name: bytes, rdatas: list[bytes], dnames: list[RR]) -> bool:
    """Whether the CNAME at ``name`` is what one of ``dnames`` substitutes (RFC 6672 §2.2)."""
    for dname in dnames:
        if name != dname.name and is_subdomain(name, dname.name) and len(rdatas) == 1:
            target = name[:len(name) - len(dname.name)] + rdata_name(dname.rdata)
            if rdatas[0].lower() == target.lower():
                return True
    return False


_NSEC3_EXHAUSTED = "too many NSEC3 hash calculations (max_nsec3_calculations)"


def _failure_text(failure: EDE, exhausted: bool = False) -> str:
    if exhausted:
        return "too many signature checks (max_signature_checks)"
    return failure.name.lower().replace("_", " ")
