"""SMTPSession objects as aiosmtpd builds them: what their making and their logins log."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiosmtpd.smtp import Session

from ispd.mail.smtp import SMTPSession


def fake_service() -> Any:
    config = SimpleNamespace(max_message_bytes=1 << 20, command_timeout_seconds=300)
    return SimpleNamespace(config=config, queue=SimpleNamespace(server_name="mx.isp.example"), tls_context=None,
                           submission_handler=object(), mx_handler=object())


# ispd.mail.smtp ignores aiosmtpd's Python warning of the same false alarm; pytest resets the
# warning filters for each test.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_sessions_and_logins_on_465_log_no_false_alarm_and_other_warnings_still_show(
        caplog: pytest.LogCaptureFixture) -> None:
    """From a soak review: every connection to 465 logged "auth_required == True but
    auth_require_tls == False" (the whole connection is TLS there), and every AUTH "Session.login_data
    is deprecated" (set by aiosmtpd's own AUTH code)."""
    caplog.set_level(logging.WARNING, logger="mail.log")

    async def make_sessions() -> None:
        for listener in ("mx", "submission", "submissions"):
            SMTPSession(fake_service(), listener)
        Session(asyncio.get_running_loop()).login_data = b"alice"  # as aiosmtpd's AUTH does

    asyncio.run(make_sessions())
    logging.getLogger("mail.log").warning("something else aiosmtpd has to say")
    assert [r.getMessage() for r in caplog.records if r.name == "mail.log"] == ["something else aiosmtpd has to say"]
