from __future__ import annotations

import pytest

from ispd.store import Conflict, InvalidValue, NotFound, Store
from ispd.store.models import SubscriberStatus


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
