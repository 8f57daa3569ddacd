"""Aliases at RCPT: which address wins, and each recipient elsewhere once; on a stand-in for the
service (its constructor wants a whole daemon) over a real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ispd.mail.engine import MXPolicy, SMTPRefusal
from ispd.mail.service import MailService
from ispd.mail.smtp import MailEnvelope
from ispd.store import Store, StoreConfig, StoreMetrics, open_store

DOMAIN = "isp.example"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(StoreConfig(path=tmp_path / "ispd.db"), StoreMetrics(), lambda: 1_800_000_000.0)
    for name in ("alice", "bob"):
        await opened.add_subscriber(name, actor="t")
        await opened.add_mailbox(name, f"{name}@{DOMAIN}", actor="t")
    yield opened
    await opened.close()


def _service(store: Store, tmp_path: Path, delimiter: str = "+") -> MailService:
    service = MailService.__new__(MailService)  # accept_recipient needs no more than this
    service.policy = MXPolicy([DOMAIN], recipient_delimiter=delimiter, postmaster=f"bob@{DOMAIN}")
    service.context = SimpleNamespace(store=store)  # type: ignore[assignment]
    service.config = SimpleNamespace(maildir_root=tmp_path)  # type: ignore[assignment]
    service.srs = None
    return service


async def _accept(service: MailService, envelope: MailEnvelope, address: str, *, submission: bool = False) -> None:
    if submission:
        await service.accept_submission_recipient(address, envelope)
    else:
        await service.accept_recipient(address, envelope)
    envelope.rcpt_tos.append(address)


async def test_an_alias_at_the_address_written_comes_before_the_mailboxes_other_candidates_name(
        store: Store, tmp_path: Path) -> None:
    """postmaster@ falls back to the configured postmaster (bob), and alice+x@ to alice: an
    alias at postmaster@ itself, or at info-sales@ with "-" for subaddresses, is what was meant."""
    await store.add_mail_alias("alice", f"postmaster@{DOMAIN}", [f"alice@{DOMAIN}"], local_domains=[DOMAIN],
                               actor="t")
    envelope = MailEnvelope()
    await _accept(_service(store, tmp_path), envelope, f"postmaster@{DOMAIN}")
    assert list(envelope.mailboxes) == [f"alice@{DOMAIN}"]

    await store.add_mailbox("alice", f"info@{DOMAIN}", actor="t")
    await store.add_mail_alias("bob", f"info-sales@{DOMAIN}", [f"bob@{DOMAIN}"], local_domains=[DOMAIN], actor="t")
    dashed = _service(store, tmp_path, delimiter="-")
    envelope = MailEnvelope()
    await _accept(dashed, envelope, f"info-sales@{DOMAIN}")
    assert list(envelope.mailboxes) == [f"bob@{DOMAIN}"]
    envelope = MailEnvelope()
    await _accept(dashed, envelope, f"info-other@{DOMAIN}")  # still a subaddress of the mailbox
    assert list(envelope.mailboxes) == [f"info@{DOMAIN}"]


@pytest.mark.parametrize("alias_first", [False, True])
async def test_a_recipient_elsewhere_gets_one_copy_however_its_domain_is_written(
        store: Store, tmp_path: Path, alias_first: bool) -> None:
    """A subscriber writes to John@Example.NET and to an alias that forwards to him (kept as
    John@example.net): one copy in the queue, not two."""
    await store.add_mail_alias("alice", f"fwd@{DOMAIN}", ["John@Example.NET"], local_domains=[DOMAIN], actor="t")
    service = _service(store, tmp_path)
    envelope = MailEnvelope()
    order = [f"fwd@{DOMAIN}", "John@EXAMPLE.net."]
    for address in order if alias_first else reversed(order):
        await _accept(service, envelope, address, submission=True)
    assert len(envelope.remote) == 1 and envelope.remote[0].startswith("John@")
    await _accept(service, envelope, "john@example.net", submission=True)  # another local part: another mailbox
    assert len(envelope.remote) == 2


async def test_aliases_reach_at_most_a_thousand_recipients_in_one_message(store: Store, tmp_path: Path) -> None:
    """max_recipients counts RCPTs, and each alias may name 50: without a cap on what they
    expand to, one message reached 100 x 50 addresses (Postfix: virtual_alias_expansion_limit)."""
    for n in range(21):
        await store.add_mail_alias("alice", f"list{n}@{DOMAIN}", [f"m{n}-{i}@example.net" for i in range(50)],
                                   local_domains=[DOMAIN], actor="t")
    service, envelope = _service(store, tmp_path), MailEnvelope()
    for n in range(20):
        await _accept(service, envelope, f"list{n}@{DOMAIN}")
    assert len(envelope.remote) == 1000
    with pytest.raises(SMTPRefusal) as refused:
        await _accept(service, envelope, f"list20@{DOMAIN}")
    assert refused.value.reply.code == 452 and refused.value.reason == "too_many_recipients"
