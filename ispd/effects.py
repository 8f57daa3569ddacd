"""What a subscriber's status does in each service, and whether it has taken effect.

``ispd subscriber show`` answers "is the suspension (or the resumption) in force everywhere?"
from evidence, not from intent: RADIUS from the Disconnect/CoA outcomes the NASes sent back and
the sessions' ends, DHCP from the pool each device's current lease was actually granted from,
DNS from the running resolver's own set of walled addresses (asked over the control socket),
mail from what the status and plan make the SMTP and IMAP servers do at each login. Pure: the
store's overview, the config and the resolver's answer in, a list of effects out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from ispd.config import Config
from ispd.radius.config import LEAVING_THE_GARDEN, LEAVING_THE_PLAN, SuspendedAction
from ispd.store.models import (
    LeaseService,
    LeaseState,
    RadiusSession,
    SubscriberOverview,
    SubscriberStatus,
    SuspendedMail,
)

DONE, PENDING, FAILED, UNKNOWN = "done", "pending", "failed", "unknown"


@dataclass(frozen=True, slots=True)
class Effect:
    service: str  # radius | dhcp | dns | mail
    subject: str  # a session, an address, a mailbox
    state: str  # done | pending | failed | unknown
    detail: str


def effects(overview: SubscriberOverview, config: Config, dns_view: dict[str, Any] | None,
            now: float) -> list[Effect]:
    """``dns_view``: the resolver's ``dns.walled.show`` answer for this subscriber, or None when
    no daemon answered."""
    return [*_radius(overview, config), *_dhcp(overview, config, now), *_dns(overview, config, dns_view),
            *_mail(overview)]


def _radius(o: SubscriberOverview, config: Config) -> list[Effect]:
    # Since the status took effect (any edit moves updated_at: a plan change is no resume).
    status = o.subscriber.status
    changed_at = o.status_since if o.status_since is not None else o.subscriber.updated_at
    plan_reply = next((p for p in config.radius.plan if o.plan is not None and p.plan == o.plan.name), None)
    action = plan_reply.suspended if plan_reply is not None and plan_reply.suspended else config.radius.suspended
    result: list[Effect] = []
    for session in o.sessions:
        subject = f"session {session.acct_session_id} on {session.nas_address}"
        if session.stopped_at is not None:
            if status is not SubscriberStatus.ACTIVE and session.stopped_at >= changed_at:
                result.append(Effect("radius", subject, DONE,
                                     f"ended {_when(session.stopped_at)} ({session.terminate_cause or 'no cause'})"))
            continue
        answered = [c for c in o.coa if c.session_id == session.id and c.at >= changed_at]
        last = max(answered, key=lambda c: c.at) if answered else None
        if status is SubscriberStatus.ACTIVE:
            # Only a CoA that moved it back (or to the over-quota profile), or the Disconnect that
            # took it out of the walled garden, is an effect of being active; an operator's
            # `session disconnect` is not.
            moves = [c for c in answered
                     if c.kind == "coa" or (c.reason or "").endswith((LEAVING_THE_GARDEN, LEAVING_THE_PLAN))]
            last = max(moves, key=lambda c: c.at) if moves else None
            leaving = LEAVING_THE_PLAN if last is not None and (last.reason or "").endswith(LEAVING_THE_PLAN) \
                else LEAVING_THE_GARDEN
            if last is None:
                result.append(Effect("radius", subject, DONE, "open with the plan's profile"))
            elif last.kind == "disconnect" and last.result == "ack":
                result.append(Effect("radius", subject, PENDING, f"Disconnect acknowledged {_when(last.at)} "
                                     f"({leaving}); waiting for the NAS's Stop"))
            elif last.kind == "disconnect":
                result.append(_outcome(subject, last.kind, last.result, last.at, leaving, session, config))
            else:
                done = ("moved to the over-quota profile" if _to_the_over_quota_profile(last.reason, o)
                        else "back to the plan's profile")
                result.append(_outcome(subject, last.kind, last.result, last.at, done, session, config,
                                       attempts=last.attempts))
            continue
        wanted = "disconnect" if status is SubscriberStatus.CLOSED or action is SuspendedAction.REJECT else "coa"
        if wanted == "disconnect":  # a CoA acknowledged gave the session a profile; it did not end it
            answered = [c for c in answered if c.kind == "disconnect"]
            last = max(answered, key=lambda c: c.at) if answered else None
        if last is None:
            result.append(Effect("radius", subject, PENDING, f"still open; no answer to a {_kind(wanted)} yet "
                                                             "(on its way, or sent at the next check)"))
        elif last.result == "ack" and last.kind == "disconnect":
            result.append(Effect("radius", subject, PENDING,
                                 f"Disconnect acknowledged {_when(last.at)}; waiting for the NAS's Stop"))
        else:
            result.append(_outcome(subject, last.kind, last.result, last.at, "moved into the walled garden",
                                   session, config))
    return result


def _to_the_over_quota_profile(reason: str | None, o: SubscriberOverview) -> bool:
    """Whether an active subscriber's CoA carried the over-quota profile: the quota's own (or
    its retry), or a plan change's while over the new plan's quota (its verdict is made before
    the CoA goes, and no second one follows)."""
    if (reason or "").startswith("over quota"):
        return True
    plan, used = o.plan, o.usage_this_month
    return (reason == "plan changed" and plan is not None and plan.monthly_quota_bytes is not None
            and used.input_octets + used.output_octets >= plan.monthly_quota_bytes)


def _outcome(subject: str, kind: str, result: str, at: float, done: str, session: RadiusSession,
             config: Config, *, attempts: int | None = None) -> Effect:
    if result == "ack":
        return Effect("radius", subject, DONE, f"{done}: {_kind(kind)} acknowledged {_when(at)}")
    if result == "error" and kind == "coa" and attempts == 0 and _nas_is_client(session, config):
        # Not sent: it would have changed nothing on that NAS (radius.coa.nothing_to_send), and
        # sending it again would not either.
        return Effect("radius", subject, FAILED, f"{_kind(kind)} not sent {_when(at)}: no attribute carries the "
                                                 f"profile to this NAS (see radius.coa.nothing_to_send in the log)")
    if result == "error" and not _nas_is_client(session, config):
        # Nothing can be sent to a NAS that is no [[radius.client]] (taken out of the config, its
        # secret gone with it): retrying as for a timeout would fail the same way every time.
        return Effect("radius", subject, FAILED,
                      f"{_kind(kind)} {result} {_when(at)}: its NAS {session.nas_address} is no longer a "
                      f"[[radius.client]]; if it is gone, `ispd session close {session.id}`")
    return Effect("radius", subject, FAILED, f"{_kind(kind)} {result} {_when(at)}: retry with `ispd session "
                                             f"{'disconnect' if kind == 'disconnect' else 'coa'}`")


def _nas_is_client(session: RadiusSession, config: Config) -> bool:
    """As the RADIUS service finds the client to sign a Disconnect or CoA with: the one that
    accounted the session, by name, else the one whose network holds its NAS's address."""
    if any(client.name == session.nas_client for client in config.radius.client):
        return True
    try:
        address = ip_address(session.nas_address)
    except ValueError:
        return False
    return any(address in client.address for client in config.radius.client)


def _kind(kind: str) -> str:
    return "Disconnect-Request" if kind == "disconnect" else "CoA-Request"


def _dhcp(o: SubscriberOverview, config: Config, now: float) -> list[Effect]:
    walled_pools = {p.name for s in config.dhcp.subnet for p in s.pool if p.walled_garden}
    suspended = o.subscriber.status is SubscriberStatus.SUSPENDED
    result = []
    for lease in o.leases:
        if lease.service is not LeaseService.DHCP or lease.state is not LeaseState.BOUND or lease.expires_at <= now:
            continue
        walled = lease.pool in walled_pools
        subject = f"{lease.address} ({lease.hw_address or lease.client_id or 'no MAC'})"
        where = f"pool {lease.pool or '-'}{' (walled garden)' if walled else ''}"
        if o.subscriber.status is SubscriberStatus.CLOSED:
            # A closed subscriber's devices are unknown clients from now on: unknown_clients says
            # what they get at their next renewal.
            after = {"ignore": "no new lease once it ends",
                     "walled-garden": "the walled-garden pools once it ends",
                     "serve": "the normal pools as an unknown client (unknown_clients = \"serve\"): "
                              "service goes on"}[config.dhcp.unknown_clients]
            done = walled and config.dhcp.unknown_clients == "walled-garden"
            state = FAILED if config.dhcp.unknown_clients == "serve" else (DONE if done else PENDING)
            result.append(Effect("dhcp", subject, state, f"{where}; {after} ({_when(lease.expires_at)})"))
        elif walled == suspended:
            result.append(Effect("dhcp", subject, DONE, where))
        elif suspended and not walled_pools:
            result.append(Effect("dhcp", subject, FAILED, f"{where}; no pool has walled_garden = true"))
        else:
            goal = "the walled garden" if suspended else "the normal pools"
            result.append(Effect("dhcp", subject, PENDING,
                                 f"{where}; moves to {goal} at its next renewal (by {_when(lease.expires_at)})"))
    return result


def _dns(o: SubscriberOverview, config: Config, view: dict[str, Any] | None) -> list[Effect]:
    if not config.dns.enabled:
        return []
    if view is None:
        return [Effect("dns", "-", UNKNOWN, "the daemon did not answer over the control socket")]
    suspended = o.subscriber.status is SubscriberStatus.SUSPENDED
    if suspended and not view["enabled"]:
        return [Effect("dns", "-", FAILED, "no [dns.walled_garden] portal is configured: answered as usual")]
    result = []
    walled = set(view["walled"])
    limited = view.get("policy_zones") or {}  # (from a daemon before them: none)
    for address in view["addresses"]:
        if (address in walled) == suspended:
            detail = "answered from the walled garden" if suspended else "answered as usual"
            if limited.get(address):
                detail += f"; with the policy zones {', '.join(limited[address])}"
            result.append(Effect("dns", address, DONE, detail))
        else:
            result.append(Effect("dns", address, PENDING, "the resolver has not yet heard of the change"))
    if not view["addresses"]:
        result.append(Effect("dns", "-", DONE, "no address of it is known to the resolver"))
    return result


def _mail(o: SubscriberOverview) -> list[Effect]:
    if not o.mailboxes:
        return []
    status = o.subscriber.status
    readable = status is SubscriberStatus.ACTIVE or (
        status is SubscriberStatus.SUSPENDED and (o.plan is None or o.plan.suspended_mail is SuspendedMail.READ))
    sending = "allowed" if status is SubscriberStatus.ACTIVE else "refused (550 5.7.1)"
    reading = "open" if readable else "refused (NO [CONTACTADMIN])"
    subject = ", ".join(m.address for m in o.mailboxes)
    # Both servers read the status at every MAIL FROM and every login: in force at once.
    return [Effect("mail", subject, DONE, f"submission {sending}; IMAP {reading}; delivery to it "
                                          f"{'refused' if status is SubscriberStatus.CLOSED else 'goes on'}")]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
