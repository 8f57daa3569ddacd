from __future__ import annotations

import pytest

from ispd.credentials import (
    PasswordRejected,
    check_verifier,
    derive_credentials,
    effective_policy,
    generate_password,
    make_verifier,
    nt_hash,
)
from ispd.store.models import CredentialPolicy, Plan, Subscriber, SubscriberStatus


def test_nt_hash_matches_rfc_2759_example() -> None:
    # RFC 2759 §9.2: Password "clientPass" -> NtPasswordHash 44EB BA8D 5312 B8D6 1147 4411 F569 89AE
    assert nt_hash("clientPass").hex().upper() == "44EBBA8D5312B8D611474411F56989AE"


def test_verifier_accepts_the_password_and_nothing_else() -> None:
    verifier = make_verifier("correct horse")
    assert verifier.startswith("$scrypt$ln=14,r=8,p=1$")
    assert check_verifier(verifier, "correct horse")
    assert not check_verifier(verifier, "correct horsE")
    assert not check_verifier(verifier, "")
    assert make_verifier("correct horse") != verifier  # salted


@pytest.mark.parametrize("junk", ["", "$", "$md5$x$y$z", "$scrypt$ln=99,r=8,p=1$AA$AA", "$scrypt$garbage$AA$AA",
                                  "$scrypt$ln=14,r=8,p=1$!!$AA"])
def test_unreadable_verifiers_never_match(junk: str) -> None:
    assert not check_verifier(junk, "anything")


def test_policy_decides_the_forms_kept() -> None:
    assert derive_credentials("pw", CredentialPolicy.VERIFIER, 1.0).forms == ["verifier"]
    assert derive_credentials("pw", CredentialPolicy.NT_HASH, 1.0).forms == ["verifier", "nt-hash"]
    full = derive_credentials("pw", CredentialPolicy.CLEARTEXT, 1.0)
    assert full.forms == ["verifier", "nt-hash", "cleartext"] and full.cleartext == "pw"


def test_subscriber_override_beats_plan() -> None:
    plan = Plan(1, "p", credential_policy=CredentialPolicy.NT_HASH)
    sub = Subscriber(1, "a", SubscriberStatus.ACTIVE, plan_id=1)
    assert effective_policy(sub.credential_policy, plan) is CredentialPolicy.NT_HASH
    assert effective_policy(sub.credential_policy, None) is CredentialPolicy.VERIFIER
    own = Subscriber(1, "a", SubscriberStatus.ACTIVE, plan_id=1, credential_policy=CredentialPolicy.CLEARTEXT)
    assert effective_policy(own.credential_policy, plan) is CredentialPolicy.CLEARTEXT


@pytest.mark.parametrize("bad", ["", "a\nb", "x\x00", "é" * 600])
def test_unusable_passwords_are_rejected(bad: str) -> None:
    with pytest.raises(PasswordRejected):
        derive_credentials(bad, CredentialPolicy.VERIFIER, 1.0)


def test_generated_passwords_avoid_look_alikes() -> None:
    password = generate_password()
    assert len(password) == 16 and not set(password) & set("lIO01")
