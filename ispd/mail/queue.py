"""The outbound queue's decisions, pure: what an SMTP reply means for a recipient, when to try
again, and when a message has waited long enough.

Theory of operation. A queued message has recipients at other domains, each pending until a
delivery attempt settles it:
- delivered: the receiving server's 250 (for that RCPT and the DATA);
- bounced: a 5xx (RFC 5321 §4.2.1: permanent), a domain with no usable MX (a null MX, RFC 7505,
  or no such domain), or still pending when the message has been queued longer than the
  lifetime; the sender gets one delivery status notification (RFC 3464) for them;
- still pending after a 4xx, a timeout or no answer from any MX: tried again after a delay that
  doubles from ``retry_initial`` up to ``retry_max`` (Postfix's minimal/maximal_backoff_time).
A message leaves the queue when no recipient is pending.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from ispd.store.models import QueuedMail, QueuedRecipientState


class Verdict(StrEnum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DEFERRED = "deferred"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    # What the receiving side said (or why it could not be reached), for the logs, the queue
    # listing and the bounce: "550 5.1.1 <bob@x>: no such user" or "connection refused".
    detail: str = ""
    status: str = ""  # the enhanced status code (RFC 3463) for the bounce, e.g. "5.1.1"
    # The server whose answer this is, "mx.example[198.51.100.7]" ("" when none answered), and the
    # TLS version of the session with it ("" in clear text): for the log line of the attempt.
    server: str = ""
    tls: str = ""


def outcome_of_reply(code: int, text: str) -> Outcome:
    detail = f"{code} {text}".strip()
    first = text.split(" ", 1)[0]
    # RFC 3463 §3: the status's class is the reply's; one that disagrees ("550 4.2.2") is a
    # server's mistake, and the reply code decides (as Postfix does).
    status = first if first.count(".") == 2 and first[:1] == str(code)[:1] else ""
    if 200 <= code < 300:
        return Outcome(Verdict.DELIVERED, detail, status or "2.0.0")
    if 500 <= code < 600:
        return Outcome(Verdict.BOUNCED, detail, status or "5.0.0")
    return Outcome(Verdict.DEFERRED, detail, status or "4.0.0")


def by_domain(addresses: list[str]) -> dict[str, list[str]]:
    """Recipients grouped by their domain (one SMTP transaction per domain and attempt, per 100
    recipients: ``outbound.RECIPIENTS_PER_TRANSACTION``)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for address in addresses:
        groups[address.rpartition("@")[2].lower().rstrip(".")].append(address)
    return dict(groups)


def retry_delay(attempts: int, initial: float, maximum: float) -> float:
    """The wait after the ``attempts``-th failed attempt (1 for the first)."""
    return min(maximum, initial * float(2 ** max(0, min(attempts - 1, 30))))


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcomes: dict[str, tuple[QueuedRecipientState, str | None]]  # for the store
    bounced: dict[str, Outcome]  # recipients the sender must be told about, with why
    next_attempt_at: float
    error: str | None  # the last deferral's detail, for the queue listing


def settle(mail: QueuedMail, results: dict[str, Outcome], now: float, *, lifetime: float, retry_initial: float,
           retry_max: float) -> AttemptResult:
    """What one attempt means: delivered and bounced recipients are settled; deferred ones wait
    for the next attempt, or bounce when the message has outlived ``lifetime``."""
    expired = now - mail.created_at >= lifetime
    outcomes: dict[str, tuple[QueuedRecipientState, str | None]] = {}
    bounced: dict[str, Outcome] = {}
    error = None
    for address in mail.pending:
        outcome = results.get(address, Outcome(Verdict.DEFERRED, "not tried"))
        if outcome.verdict is Verdict.DEFERRED and expired:
            outcome = Outcome(Verdict.BOUNCED, f"delivery time expired; last: {outcome.detail}",
                              "4.4.7")  # RFC 3463: delivery time expired
        if outcome.verdict is Verdict.DELIVERED:
            outcomes[address] = (QueuedRecipientState.DELIVERED, outcome.detail)
        elif outcome.verdict is Verdict.BOUNCED:
            outcomes[address] = (QueuedRecipientState.BOUNCED, outcome.detail)
            bounced[address] = outcome
        else:  # still pending, with why (`mail queue list` shows it per recipient)
            outcomes[address] = (QueuedRecipientState.PENDING, outcome.detail)
            error = outcome.detail
    delay = retry_delay(mail.attempts + 1, retry_initial, retry_max)
    # Never past the lifetime by much: the last try comes when it ends.
    next_attempt_at = min(now + delay, max(now, mail.created_at + lifetime))
    return AttemptResult(outcomes, bounced, next_attempt_at, error)
