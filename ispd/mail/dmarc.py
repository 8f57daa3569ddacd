"""DMARC (RFC 7489), pure: the policy a From domain publishes, and whether SPF or DKIM passed
for a domain aligned with it.

Ours rather than a library's: the one Python implementation wrapped for this (authheaders)
extracts domains with a pattern that drops hyphens (``my-isp.example`` becomes ``my``), so it
evaluates the wrong domain for many real senders. The organisational domain comes from the
Public Suffix List (publicsuffixlist, which ships a current copy; no network).

Policy discovery (§6.6.3): ``_dmarc.<From domain>``, else ``_dmarc.<organisational domain>``
(then its ``sp=`` applies, if given); more than one DMARC record at a name ends discovery; a
record without a valid ``p=`` but otherwise valid is ``p=none``. Alignment (§3.1): relaxed
(same organisational domain) unless ``aspf=s`` / ``adkim=s`` ask for the exact domain. ``pct=``
(§6.6.4): the policy applies to that share of failures, the rest get the next milder one
(reject, quarantine, none), so ``pct=0`` is how a domain tries ``p=reject`` out without losing
mail; DMARCbis's ``t=y`` (which replaces it) asks the same as ``pct=0``. Several From domains:
each must pass (§6.6.1).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList


class DNSTemporaryError(Exception):
    """A lookup that failed for now (timeout, SERVFAIL): DMARC says temperror, never fail."""


@dataclass(frozen=True, slots=True)
class DMARCResult:
    result: str  # pass, fail, none, temperror, permerror
    policy: str  # none, quarantine, reject ("" when no record applies)
    from_domain: str


@lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    domain = domain.lower().rstrip(".")
    return _suffixes().privatesuffix(domain) or domain


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record, or None when it is not one (v=DMARC1 must come first)."""
    tags: dict[str, str] = {}
    for index, part in enumerate(text.split(";")):
        name, sep, value = part.strip().partition("=")
        if not sep:
            if part.strip():
                return None if index == 0 else tags
            continue
        name, value = name.strip().lower(), value.strip()
        if index == 0 and (name != "v" or value != "DMARC1"):
            return None
        tags.setdefault(name, value)
    return tags if tags else None


def _policy(value: str | None) -> str | None:
    value = (value or "").lower()
    return value if value in ("none", "quarantine", "reject") else None


def discover(from_domain: str, lookup: Callable[[str], list[str]]) -> tuple[str, dict[str, str]] | None:
    """(the policy to apply, the record) for a From domain, or None when no record applies.
    ``lookup`` gives the TXT strings at a name ([] for none); raises DNSTemporaryError."""
    organisational = organisational_domain(from_domain)
    for name, at_org in ((from_domain, False), (organisational, True)):
        if at_org and name == from_domain:
            break
        records = [r for r in (parse_record(t) for t in lookup(f"_dmarc.{name}")) if r is not None]
        if len(records) > 1:
            return None  # §6.6.3 step 5: discovery ends; DMARC does not apply
        if not records:
            continue
        record = records[0]
        policy = _policy(record.get("p")) or "none"
        if at_org:
            policy = _policy(record.get("sp")) or policy
        if not _sampled(record):
            policy = _MILDER[policy]
        return policy, record
    return None


_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def _sampled(record: dict[str, str]) -> bool:
    """Whether this failure gets the policy itself (pct=, t=y), not the next milder one."""
    if record.get("t", "").lower() == "y":
        return False
    try:
        pct = int(record.get("pct", "100"))
    except ValueError:
        return True  # an invalid pct= is ignored (§6.3: as if absent)
    return pct >= 100 or random.randrange(100) < max(pct, 0)


def _aligned(domain: str, from_domain: str, mode: str) -> bool:
    domain, from_domain = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if mode == "s":
        return domain == from_domain
    return organisational_domain(domain) == organisational_domain(from_domain)


def evaluate(from_domains: list[str], *, spf_result: str, spf_domain: str, dkim_domains: list[str],
             lookup: Callable[[str], list[str]]) -> DMARCResult:
    """``spf_domain``: the domain SPF checked (MAIL FROM's, or HELO's for the null sender);
    ``dkim_domains``: the d= of every signature that verified."""
    if not from_domains:
        return DMARCResult("permerror", "", "")
    worst = DMARCResult("none", "", from_domains[0])
    rank = {"none": 0, "pass": 1, "temperror": 2, "fail": 3}
    for from_domain in dict.fromkeys(d.lower().rstrip(".") for d in from_domains):
        try:
            found = discover(from_domain, lookup)
        except DNSTemporaryError:
            result = DMARCResult("temperror", "", from_domain)
        else:
            if found is None:
                result = DMARCResult("none", "", from_domain)
            else:
                policy, record = found
                passed = (spf_result == "pass" and _aligned(spf_domain, from_domain, record.get("aspf", "r"))) or any(
                    _aligned(d, from_domain, record.get("adkim", "r")) for d in dkim_domains)
                result = DMARCResult("pass" if passed else "fail", policy, from_domain)
        if rank[result.result] > rank[worst.result] or (
                result.result == worst.result == "fail" and _strength(result.policy) > _strength(worst.policy)):
            worst = result
    return worst


def _strength(policy: str) -> int:
    return {"reject": 2, "quarantine": 1}.get(policy, 0)
