"""The judgement behind `ispd subscriber show`'s effects: from evidence to done/pending/failed."""

from __future__ import annotations

from dataclasses import replace

from ispd.config import Config
from ispd.effects import effects
from ispd.store.models import (
    CoARecord,
    Lease,
    LeaseState,
    Mailbox,
    Plan,
    RadiusSession,
    StoredCredentials,
    Subscriber,
    SubscriberOverview,
    SubscriberStatus,
    SuspendedMail,
    Usage,
)

T = 1_800_000_000.0
CONFIG = Config.model_validate({
    "dhcp": {"subnet": [{"network": "198.18.0.0/24", "pool": [
        {"name": "lan", "range": "198.18.0.100 - 198.18.0.150"},
        {"name": "garden", "range": "198.18.0.200 - 198.18.0.210", "walled_garden": True}]}]},
    "dns": {"enabled": True, "walled_garden": {"portal_ipv4": "198.18.0.10"}},
    "radius": {"suspended": "reject"},
})


def overview(status: SubscriberStatus, **kw: object) -> SubscriberOverview:
    subscriber = Subscriber(1, "alice", status, plan_id=1, status_reason="unpaid", updated_at=T)
    base = SubscriberOverview(subscriber, Plan(1, "home"), StoredCredentials(), [], [], [], [], [])
    return replace(base, **kw)  # type: ignore[arg-type]


def session(sid: int, stopped_at: float | None = None) -> RadiusSession:
    return RadiusSession(sid, "198.18.0.1", f"s{sid}", "alice", T - 600, T - 60, subscriber_id=1,
                         framed_ip=f"198.18.0.{sid}", stopped_at=stopped_at, terminate_cause="Admin-Reset" if stopped_at
                         else None)


def coa(session_id: int, result: str, at: float = T + 1, kind: str = "disconnect") -> CoARecord:
    return CoARecord(session_id, at, kind, "198.18.0.1", result, 1, at, session_id=session_id, subscriber_id=1)


def states(found: list, service: str) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(e.subject, e.state) for e in found if e.service == service]


def test_a_suspension_is_done_in_radius_only_once_the_nas_answered() -> None:
    o = overview(SubscriberStatus.SUSPENDED,
                 sessions=[session(1), session(2), session(3), session(4, stopped_at=T + 5), session(5, T - 100)],
                 coa=[coa(2, "ack"), coa(3, "timeout"), coa(1, "ack", at=T - 500)])  # #1: an old answer only
    found = effects(o, CONFIG, None, T + 10)
    assert states(found, "radius") == [("session s1 on 198.18.0.1", "pending"), ("session s2 on 198.18.0.1", "pending"),
                                       ("session s3 on 198.18.0.1", "failed"), ("session s4 on 198.18.0.1", "done")]
    detail = {e.subject: e.detail for e in found}
    assert "waiting for the NAS's Stop" in detail["session s2 on 198.18.0.1"]
    assert "retry with `ispd session disconnect`" in detail["session s3 on 198.18.0.1"]


def test_a_session_whose_nas_is_no_client_is_told_to_be_closed_not_retried() -> None:
    """From a bug hunt: a NAS taken out of [[radius.client]] (a SIGHUP) leaves its sessions open;
    the suspension's Disconnect ends in "error" and show said "retry with `ispd session
    disconnect`", which fails the same way each time. `session close` is what frees the session."""
    config = Config.model_validate({"radius": {"client": [
        {"name": "bng", "address": "198.18.0.0/24", "secret": "s3cret-s3cret"}]}})
    gone = replace(session(2), nas_address="198.51.100.7", nas_client="old-bng")
    o = overview(SubscriberStatus.SUSPENDED, sessions=[session(1), gone],
                 coa=[coa(1, "timeout"), coa(2, "error")])
    detail = {e.subject: (e.state, e.detail) for e in effects(o, config, None, T + 10) if e.service == "radius"}
    assert detail["session s1 on 198.18.0.1"][0] == "failed"
    assert "retry with `ispd session disconnect`" in detail["session s1 on 198.18.0.1"][1]
    state, said = detail["session s2 on 198.51.100.7"]
    assert state == "failed" and "no longer a [[radius.client]]" in said and "`ispd session close 2`" in said, said


def test_a_coa_acknowledged_does_not_carry_out_a_suspension_that_disconnects() -> None:
    """With suspended = "reject" only a Disconnect ends the session: a CoA's ACK gave it a
    profile (the plan's, as `session coa` did), and reading it as done stopped the retries."""
    o = overview(SubscriberStatus.SUSPENDED, sessions=[session(1), session(2)],
                 coa=[coa(1, "nak"), coa(1, "ack", at=T + 2, kind="coa"), coa(2, "ack", kind="coa")])
    detail = {e.subject: (e.state, e.detail) for e in effects(o, CONFIG, None, T + 10) if e.service == "radius"}
    assert detail["session s1 on 198.18.0.1"][0] == "failed"  # the Disconnect's NAK is what counts
    assert detail["session s2 on 198.18.0.1"] == ("pending", "still open; no answer to a Disconnect-Request yet "
                                                             "(on its way, or sent at the next check)")


def test_being_active_is_judged_from_the_status_change_and_coa_only() -> None:
    """An operator's Disconnect of an active subscriber's session is no effect of being active
    (it read as "back to the plan's profile", or as failed when it timed out); the evidence
    counts from the status change, not from any later edit (a plan change)."""
    o = overview(SubscriberStatus.ACTIVE, sessions=[session(1), session(2), session(3)],
                 coa=[coa(1, "timeout"), coa(2, "ack", kind="coa"), coa(3, "ack", at=T - 50, kind="coa")],
                 status_since=T - 100, subscriber=Subscriber(1, "alice", SubscriberStatus.ACTIVE, plan_id=1,
                                                          updated_at=T + 5))
    found = effects(o, CONFIG, None, T + 10)
    detail = {e.subject: (e.state, e.detail) for e in found if e.service == "radius"}
    assert detail["session s1 on 198.18.0.1"] == ("done", "open with the plan's profile")
    assert detail["session s2 on 198.18.0.1"][0] == "done" and "back to the plan's profile" in detail[
        "session s2 on 198.18.0.1"][1]
    assert "back to the plan's profile" in detail["session s3 on 198.18.0.1"][1]  # after the resume, before the edit


def test_a_resume_s_disconnect_out_of_the_walled_garden_is_judged_as_its_coa_would_be() -> None:
    """A session whose plan would leave a garden attribute in force is disconnected on resume
    (the record's reason says so): acknowledged, its Stop is awaited; timed out, it failed.
    An operator's own Disconnect still counts for nothing."""
    leaving = "resumed: leaving the walled garden"
    o = overview(SubscriberStatus.ACTIVE, sessions=[session(1), session(2), session(3)],
                 coa=[replace(coa(1, "ack"), reason=leaving), replace(coa(2, "timeout"), reason=leaving),
                      replace(coa(3, "timeout"), reason="admin")],
                 status_since=T - 100)
    detail = {e.subject: (e.state, e.detail) for e in effects(o, CONFIG, None, T + 10) if e.service == "radius"}
    assert detail["session s1 on 198.18.0.1"][0] == "pending" and "waiting for the NAS's Stop" in detail[
        "session s1 on 198.18.0.1"][1]
    assert detail["session s2 on 198.18.0.1"][0] == "failed" and "retry with `ispd session disconnect`" in detail[
        "session s2 on 198.18.0.1"][1]
    assert detail["session s3 on 198.18.0.1"] == ("done", "open with the plan's profile")


def test_a_coa_not_sent_for_want_of_attributes_is_no_retry_hint() -> None:
    """From a bug hunt: a CoA that would carry nothing to its NAS (a Cisco one, which gets no
    rate limit) is not sent (attempts 0); "retry with `ispd session coa`" would fail the same way."""
    config = Config.model_validate({"radius": {"client": [
        {"name": "asr", "address": "198.18.0.1", "secret": "s", "kind": "cisco"}]}})
    o = overview(SubscriberStatus.ACTIVE, sessions=[session(1), session(2)],
                 coa=[replace(coa(1, "error", kind="coa"), attempts=0, reason="over quota"),
                      coa(2, "timeout", kind="coa")], status_since=T - 100)
    detail = {e.subject: (e.state, e.detail) for e in effects(o, config, None, T + 10) if e.service == "radius"}
    assert detail["session s1 on 198.18.0.1"][0] == "failed"
    assert "no attribute carries the profile" in detail["session s1 on 198.18.0.1"][1]
    assert "retry with `ispd session coa`" in detail["session s2 on 198.18.0.1"][1]


def test_a_coa_that_carried_the_over_quota_profile_says_so() -> None:
    """From a bug hunt: an over-quota CoA sent again (reason "over quota, retry"), or a plan
    change's CoA to a plan whose quota is used up (one CoA, with the throttle), was shown as
    "back to the plan's profile"."""
    capped = Plan(1, "capped", monthly_quota_bytes=1000)
    o = overview(SubscriberStatus.ACTIVE, plan=capped, usage_this_month=Usage(600, 600),
                 sessions=[session(1), session(2), session(3)],
                 coa=[replace(coa(1, "ack", kind="coa"), reason="over quota, retry"),
                      replace(coa(2, "ack", kind="coa"), reason="plan changed"),
                      replace(coa(3, "ack", kind="coa"), reason="quota reset, retry")], status_since=T - 100)
    detail = {e.subject: e.detail for e in effects(o, CONFIG, None, T + 10) if e.service == "radius"}
    assert detail["session s1 on 198.18.0.1"].startswith("moved to the over-quota profile")
    assert detail["session s2 on 198.18.0.1"].startswith("moved to the over-quota profile")
    assert detail["session s3 on 198.18.0.1"].startswith("back to the plan's profile")
    under = effects(replace(o, usage_this_month=Usage(100, 100)), CONFIG, None, T + 10)
    assert next(e.detail for e in under if e.subject == "session s2 on 198.18.0.1").startswith("back to the plan's")


def test_dhcp_is_done_when_the_lease_comes_from_the_right_pool() -> None:
    leases = [Lease("198.18.0.201", LeaseState.BOUND, T, T + 300, hw_address="02:00:00:00:00:01", pool="garden"),
              Lease("198.18.0.101", LeaseState.BOUND, T - 60, T + 3000, hw_address="02:00:00:00:00:02", pool="lan"),
              Lease("198.18.0.102", LeaseState.RELEASED, T - 60, T - 1, pool="lan")]
    suspended = effects(overview(SubscriberStatus.SUSPENDED, leases=leases), CONFIG, None, T + 10)
    assert states(suspended, "dhcp") == [("198.18.0.201 (02:00:00:00:00:01)", "done"),
                                         ("198.18.0.101 (02:00:00:00:00:02)", "pending")]
    active = effects(overview(SubscriberStatus.ACTIVE, leases=leases), CONFIG, None, T + 10)
    assert [s for _, s in states(active, "dhcp")] == ["pending", "done"]


def test_dns_is_judged_from_the_resolver_s_own_answer() -> None:
    o = overview(SubscriberStatus.SUSPENDED)
    view = {"enabled": True, "addresses": ["198.18.0.5", "198.18.0.6"], "walled": ["198.18.0.5"]}
    assert states(effects(o, CONFIG, view, T), "dns") == [("198.18.0.5", "done"), ("198.18.0.6", "pending")]
    assert states(effects(o, CONFIG, None, T), "dns") == [("-", "unknown")]  # no daemon answered
    assert states(effects(o, CONFIG, {**view, "enabled": False}, T), "dns") == [("-", "failed")]
    # The policy zones limited to some clients (a plan's family filter) that each address gets.
    active = {**view, "walled": [], "policy_zones": {"198.18.0.5": ["family.rpz", "school.rpz"], "198.18.0.6": []}}
    details = [e.detail for e in effects(overview(SubscriberStatus.ACTIVE), CONFIG, active, T) if e.service == "dns"]
    assert details == ["answered as usual; with the policy zones family.rpz, school.rpz", "answered as usual"]


def test_mail_follows_the_status_and_the_plan() -> None:
    boxes = [Mailbox(1, 1, "alice@isp.example")]
    reading = effects(overview(SubscriberStatus.SUSPENDED, mailboxes=boxes), CONFIG, None, T)
    assert "submission refused (550 5.7.1); IMAP open" in next(e for e in reading if e.service == "mail").detail
    strict = overview(SubscriberStatus.SUSPENDED, mailboxes=boxes,
                      plan=Plan(1, "home", suspended_mail=SuspendedMail.NONE))
    assert "IMAP refused" in next(e for e in effects(strict, CONFIG, None, T) if e.service == "mail").detail
    # Nothing of its own in any service: only DNS, which cannot tell without the daemon.
    assert [(e.service, e.state) for e in effects(overview(SubscriberStatus.ACTIVE), CONFIG, None, T)] == [
        ("dns", "unknown")]


def test_a_closed_subscribers_device_follows_unknown_clients() -> None:
    """A closed subscriber's devices are unknown clients: with the default (serve) they keep
    full service from the normal pools, which the overview must say, not "no new lease"."""
    lease = Lease("198.18.0.100", LeaseState.BOUND, T - 60, T + 3000, hw_address="02:00:00:00:00:01", pool="lan")
    o = overview(SubscriberStatus.CLOSED, leases=[lease])
    [served] = [e for e in effects(o, CONFIG, None, T + 10) if e.service == "dhcp"]
    assert served.state == "failed" and "service goes on" in served.detail
    for setting, state, words in (("ignore", "pending", "no new lease"),
                                  ("walled-garden", "pending", "walled-garden pools")):
        config = CONFIG.model_copy(update={"dhcp": CONFIG.dhcp.model_copy(update={"unknown_clients": setting})})
        [effect] = [e for e in effects(o, config, None, T + 10) if e.service == "dhcp"]
        assert effect.state == state and words in effect.detail, (setting, effect)
