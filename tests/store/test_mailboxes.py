from __future__ import annotations

import pytest

from ispd.store import Conflict, InvalidValue, NotFound, Store
from ispd.store.models import (
    AliasStillNaming,
    QueuedMail,
    QueuedRecipient,
    QueuedRecipientState,
    SubscriberStatus,
)


async def test_a_mailbox_is_kept_in_lowercase_and_found_by_its_address(store: Store) -> None:
    await store.add_plan("home", actor="t", mail_quota_bytes=10_000_000)
    await store.add_subscriber("alice", actor="t", plan="home")
    mailbox = await store.add_mailbox("alice", " Alice.Smith@ISP.Example ", actor="t")
    assert mailbox.address == "alice.smith@isp.example"
    recipient = await store.mail_recipient("alice.smith@isp.example")
    assert recipient is not None
    assert recipient.mailbox == mailbox and recipient.username == "alice"
    assert recipient.status is SubscriberStatus.ACTIVE
    assert recipient.quota_bytes == 10_000_000  # the plan's
    assert await store.mail_recipient("bob@isp.example") is None


async def test_the_mailbox_quota_overrides_the_plan_and_none_gives_it_back(store: Store) -> None:
    await store.add_plan("home", actor="t", mail_quota_bytes=10_000_000)
    await store.add_subscriber("alice", actor="t", plan="home")
    await store.add_mailbox("alice", "alice@isp.example", actor="t", quota_bytes=500)
    recipient = await store.mail_recipient("alice@isp.example")
    assert recipient is not None and recipient.quota_bytes == 500
    changed = await store.set_mailbox_quota("alice@isp.example", None, actor="t")
    assert changed.quota_bytes is None
    recipient = await store.mail_recipient("alice@isp.example")
    assert recipient is not None and recipient.quota_bytes == 10_000_000
    await store.add_subscriber("bob", actor="t")  # no plan: no limit
    await store.add_mailbox("bob", "bob@isp.example", actor="t")
    recipient = await store.mail_recipient("bob@isp.example")
    assert recipient is not None and recipient.quota_bytes is None


async def test_one_address_has_one_owner(store: Store) -> None:
    await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("bob", actor="t")
    await store.add_mailbox("alice", "info@isp.example", actor="t")
    with pytest.raises(Conflict, match="alice"):
        await store.add_mailbox("bob", "INFO@isp.example", actor="t")


@pytest.mark.parametrize("address", ["alice", "@isp.example", "alice@", "alice@localhost", "a/b@isp.example",
                                     ".alice@isp.example", "alice..x@isp.example", "al+ce@isp.example",
                                     "alice@-isp.example", "x" * 65 + "@isp.example"])
async def test_addresses_that_cannot_name_a_maildir_are_refused(store: Store, address: str) -> None:
    await store.add_subscriber("alice", actor="t")
    with pytest.raises(InvalidValue):
        await store.add_mailbox("alice", address, actor="t")


async def test_mailboxes_are_listed_deleted_and_audited(store: Store) -> None:
    await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("bob", actor="t")
    await store.add_mailbox("bob", "bob@isp.example", actor="t")
    await store.add_mailbox("alice", "alice@isp.example", actor="t")
    assert [m.address for m in await store.list_mailboxes()] == ["alice@isp.example", "bob@isp.example"]
    assert [m.address for m in await store.list_mailboxes(subscriber="bob")] == ["bob@isp.example"]
    deleted = await store.delete_mailbox("bob@isp.example", actor="t")
    assert deleted.address == "bob@isp.example"
    with pytest.raises(NotFound):
        await store.delete_mailbox("bob@isp.example", actor="t")
    overview = await store.subscriber_overview("bob")
    assert overview.mailboxes == []
    assert [e.action for e in overview.audit][:2] == ["mailbox.deleted", "mailbox.added"]
    # A subscriber's mailboxes go with it.
    await store.delete_subscriber("alice", actor="t")
    assert await store.mail_recipient("alice@isp.example") is None


def _queued(queue_id: str, *recipients: str, at: float = 100.0) -> QueuedMail:
    return QueuedMail(id=queue_id, created_at=at, sender="alice@isp.example", size=42, next_attempt_at=at,
                      recipients=tuple(QueuedRecipient(r) for r in recipients), subscriber_id=None)


async def test_mail_set_for_later_than_any_retry_is_due_after_the_rest(store: Store) -> None:
    """With the wall clock stepped back three hours, what was set for a retry in five minutes
    waited three hours and five minutes: set further ahead than ``after``, it is due."""
    await store.enqueue_mail(_queued("Q1", "a@x.example", at=100.0))
    await store.enqueue_mail(_queued("Q2", "b@x.example", at=500.0))
    await store.enqueue_mail(_queued("Q3", "c@x.example", at=100.0 + 3 * 3600))
    assert [m.id for m in await store.due_mail(200.0, after=200.0 + 3600)] == ["Q1", "Q3"]
    assert [m.id for m in await store.due_mail(200.0, after=200.0 + 3600, limit=1)] == ["Q1"]
    assert [m.id for m in await store.due_mail(200.0)] == ["Q1"]


async def test_the_queue_keeps_each_recipients_state_until_none_is_pending(store: Store) -> None:
    await store.enqueue_mail(_queued("Q1", "a@x.example", "b@y.example", "c@y.example"))
    await store.enqueue_mail(_queued("Q2", "d@z.example", at=500.0))
    assert [m.id for m in await store.due_mail(200.0)] == ["Q1"]
    assert [m.id for m in await store.due_mail(500.0)] == ["Q1", "Q2"]
    after = await store.record_mail_attempt("Q1", {
        "a@x.example": (QueuedRecipientState.DELIVERED, "250 ok"),
        "b@y.example": (QueuedRecipientState.BOUNCED, "550 no")}, next_attempt_at=900.0, error="450 later")
    assert after is not None and after.pending == ["c@y.example"] and after.attempts == 1
    assert after.last_error == "450 later" and after.next_attempt_at == 900.0
    assert [m.id for m in await store.due_mail(500.0)] == ["Q2"]
    done = await store.record_mail_attempt("Q1", {"c@y.example": (QueuedRecipientState.DELIVERED, "250 ok")},
                                           next_attempt_at=2000.0, error=None)
    assert done is not None and done.pending == []
    assert [m.id for m in await store.list_mail_queue()] == ["Q2"]  # gone once nothing is pending
    assert await store.record_mail_attempt("Q1", {}, next_attempt_at=0.0, error=None) is None


async def test_a_delivery_is_written_down_before_the_attempt_ends(store: Store) -> None:
    await store.enqueue_mail(_queued("Q1", "a@x.example", "b@y.example"))
    await store.record_mail_delivered("Q1", {"a@x.example": "250 ok"})
    [mail] = await store.list_mail_queue()
    assert mail.pending == ["b@y.example"] and mail.attempts == 0 and mail.next_attempt_at == 100.0
    # The attempt's record that follows does not undo it, nor count it again.
    after = await store.record_mail_attempt("Q1", {"a@x.example": (QueuedRecipientState.DELIVERED, "250 ok"),
                                                   "b@y.example": (QueuedRecipientState.PENDING, "450 later")},
                                            next_attempt_at=900.0, error="450 later")
    assert after is not None and after.pending == ["b@y.example"] and after.attempts == 1
    await store.record_mail_delivered("Q1", {"b@y.example": "250 ok"})
    assert await store.list_mail_queue() == []  # nothing pending: gone, as after an attempt


async def test_queued_mail_can_be_flushed_and_deleted(store: Store) -> None:
    await store.enqueue_mail(_queued("Q1", "a@x.example", at=100.0))
    await store.enqueue_mail(_queued("Q2", "b@x.example", at=100.0))
    await store.record_mail_attempt("Q1", {}, next_attempt_at=5000.0, error="timeout")
    await store.record_mail_attempt("Q2", {}, next_attempt_at=5000.0, error="timeout")
    assert await store.reschedule_mail("Q1", 150.0) == 1
    assert [m.id for m in await store.due_mail(200.0)] == ["Q1"]
    assert await store.reschedule_mail(None, 150.0) == 2
    with pytest.raises(NotFound):
        await store.reschedule_mail("NOPE", 150.0)
    deleted = await store.delete_queued_mail("Q1", actor="t")
    assert deleted.pending == ["a@x.example"]
    with pytest.raises(NotFound):
        await store.delete_queued_mail("Q1", actor="t")
    assert [m.id for m in await store.list_mail_queue()] == ["Q2"]


async def test_one_entry_and_the_summary_are_read_cheaply(store: Store) -> None:
    assert await store.mail_queue_summary() == (0, None)
    await store.enqueue_mail(_queued("Q1", "a@x.example", at=100.0))
    await store.enqueue_mail(_queued("Q2", "b@x.example", at=50.0))
    assert await store.mail_queue_summary() == (2, 50.0)
    found = await store.get_queued_mail("Q1")
    assert found is not None and found.pending == ["a@x.example"]
    assert await store.get_queued_mail("NOPE") is None


async def test_an_alias_takes_a_free_address_mailboxes_here_and_addresses_elsewhere(store: Store) -> None:
    await store.add_subscriber("alice", actor="t")
    await store.add_mailbox("alice", "alice@isp.example", actor="t")
    here = ["isp.example"]
    alias = await store.add_mail_alias("alice", "Info@ISP.example", ["ALICE@isp.example", "John+ISP@Example.NET",
                                                                       "alice@isp.example"],
                                       local_domains=here, actor="t")
    assert alias.address == "info@isp.example"
    assert alias.targets == ("alice@isp.example", "John+ISP@example.net")  # (once each; the other server's case)
    found = await store.mail_alias("info@isp.example")
    assert found == (alias, SubscriberStatus.ACTIVE)
    with pytest.raises(NotFound, match=r"no mailbox bob@isp\.example"):
        await store.add_mail_alias("alice", "sales@isp.example", ["bob@isp.example"], local_domains=here, actor="t")
    with pytest.raises(InvalidValue):
        await store.add_mail_alias("alice", "sales@isp.example", ["bad address@example.net"], local_domains=here,
                                   actor="t")
    with pytest.raises(InvalidValue, match="1 to 50"):
        await store.add_mail_alias("alice", "sales@isp.example", [f"a{i}@example.net" for i in range(51)],
                                   local_domains=here, actor="t")
    with pytest.raises(Conflict, match="is an alias"):
        await store.add_mailbox("alice", "info@isp.example", actor="t")
    assert [a.address for a in await store.list_mail_aliases(subscriber="alice")] == ["info@isp.example"]
    entries = [e.action for e in await store.audit_since(0)]
    assert "mail_alias.added" in entries
    before = await store.last_audit_id()
    await store.delete_subscriber("alice", actor="t")  # its aliases go with it, each said
    assert await store.list_mail_aliases() == [] and await store.mail_alias("info@isp.example") is None
    assert [(e.action, e.details.get("address")) for e in await store.audit_since(before)][:2] == [
        ("mailbox.deleted", "alice@isp.example"), ("mail_alias.deleted", "info@isp.example")]


async def test_the_aliases_that_still_name_deleted_mailboxes_say_what_their_mail_reaches_now(store: Store) -> None:
    await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("biz", actor="t")
    for local in ("temp", "keep"):
        await store.add_mailbox("alice", f"{local}@isp.example", actor="t")
    here = ["isp.example"]
    await store.add_mail_alias("biz", "team@isp.example", ["temp@isp.example", "keep@isp.example", "x@example.net"],
                               local_domains=here, actor="t")
    await store.add_mail_alias("biz", "only@isp.example", ["temp@isp.example"], local_domains=here, actor="t")
    await store.add_mail_alias("biz", "other@isp.example", ["keep@isp.example"], local_domains=here, actor="t")
    biz = (await store.get_subscriber("biz")).id
    await store.delete_mailbox("temp@isp.example", actor="t")
    assert await store.aliases_still_naming({"temp@isp.example"}) == [
        AliasStillNaming("only@isp.example", biz, ("temp@isp.example",), ()),
        AliasStillNaming("team@isp.example", biz, ("temp@isp.example",), ("keep@isp.example", "x@example.net"))]
    both = await store.aliases_still_naming(["temp@isp.example", "keep@isp.example"])
    assert [(a.address, a.gone_targets, a.remaining_targets) for a in both] == [
        ("only@isp.example", ("temp@isp.example",), ()), ("other@isp.example", ("keep@isp.example",), ()),
        ("team@isp.example", ("temp@isp.example", "keep@isp.example"), ("x@example.net",))]
    assert await store.aliases_still_naming(set()) == []
