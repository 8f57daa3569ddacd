"""EAP inside RADIUS (RFC 3748, RFC 3579): the packet codec and EAP-MD5.

Theory of operation. EAP travels in EAP-Message attributes (split at 253 octets, joined in
order) and every RADIUS packet that carries EAP also carries a Message-Authenticator (RFC 3579
§3.2; the transport already insists on it). ispd is the EAP server and offers EAP-MD5
(RFC 3748 §5.4):

1. Access-Request with EAP-Response/Identity → Access-Challenge with EAP-Request/MD5-Challenge
   (16 random octets) and a State attribute that names the conversation;
2. Access-Request with EAP-Response/MD5-Challenge and that State → the response is checked
   against MD5(identifier + password + challenge): Access-Accept with EAP-Success, or
   Access-Reject with EAP-Failure. A Nak (the peer wants another method) gets EAP-Failure.

Conversations live in ``EAPConversations`` for ``EAP_TIMEOUT_SECONDS`` and are used once.
EAP-TTLS and PEAP, the methods inside a TLS tunnel, are in ``ispd.radius.eaptls``.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import IntEnum

from ispd.radius.codec import MAX_ATTRIBUTE_VALUE, chap_response

EAP_TIMEOUT_SECONDS = 30.0
MAX_CONVERSATIONS = 100_000


class EAPCode(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class EAPType(IntEnum):
    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3
    MD5_CHALLENGE = 4


@dataclass(frozen=True, slots=True)
class EAPPacket:
    code: int
    identifier: int
    type: int | None = None  # requests and responses only
    data: bytes = b""


def decode_eap(message: bytes) -> EAPPacket | None:
    """An EAP packet from the joined EAP-Message values; None when it is malformed."""
    if len(message) < 4:
        return None
    code, identifier, length = message[0], message[1], int.from_bytes(message[2:4], "big")
    if length < 4 or length > len(message):
        return None
    if code in (EAPCode.REQUEST, EAPCode.RESPONSE):
        if length < 5:
            return None
        return EAPPacket(code, identifier, message[4], message[5:length])
    if code in (EAPCode.SUCCESS, EAPCode.FAILURE) and length == 4:
        return EAPPacket(code, identifier)
    return None


def encode_eap(packet: EAPPacket) -> bytes:
    body = b"" if packet.type is None else bytes((packet.type,)) + packet.data
    return bytes((packet.code, packet.identifier)) + (4 + len(body)).to_bytes(2, "big") + body


def eap_attributes(message: bytes) -> list[bytes]:
    """The EAP-Message values that carry ``message`` (RFC 3579 §3.1)."""
    return [message[i:i + MAX_ATTRIBUTE_VALUE] for i in range(0, len(message), MAX_ATTRIBUTE_VALUE)] or [b""]


def md5_challenge_request(identifier: int, challenge: bytes, server_name: bytes = b"ispd") -> EAPPacket:
    return EAPPacket(EAPCode.REQUEST, identifier, EAPType.MD5_CHALLENGE, bytes((len(challenge),)) + challenge
                     + server_name)


def md5_response_value(packet: EAPPacket) -> bytes | None:
    """The 16-octet value of an EAP-Response/MD5-Challenge, or None."""
    if packet.type != EAPType.MD5_CHALLENGE or not packet.data:
        return None
    size = packet.data[0]
    if size != 16 or len(packet.data) < 1 + size:
        return None
    return packet.data[1:1 + size]


def check_md5_response(identifier: int, password: bytes, challenge: bytes, response: bytes) -> bool:
    return hmac.compare_digest(chap_response(identifier, password, challenge), response)


@dataclass(frozen=True, slots=True)
class Conversation:
    username: str
    identifier: int  # of the EAP-Request sent
    challenge: bytes
    expires_at: float


class EAPConversations:
    """EAP-MD5 conversations in flight, by the State sent in the Access-Challenge."""

    def __init__(self) -> None:
        self._by_state: dict[bytes, Conversation] = {}

    def begin(self, username: str, identifier: int, now: float) -> tuple[bytes, Conversation]:
        if len(self._by_state) >= MAX_CONVERSATIONS:
            self.expire(now)
            if len(self._by_state) >= MAX_CONVERSATIONS:  # a flood: the oldest make room
                for state in list(self._by_state)[:MAX_CONVERSATIONS // 10]:
                    del self._by_state[state]
        state = os.urandom(16)
        conversation = Conversation(username, identifier, os.urandom(16), now + EAP_TIMEOUT_SECONDS)
        self._by_state[state] = conversation
        return state, conversation

    def take(self, state: bytes, now: float) -> Conversation | None:
        """The conversation ``state`` names, once; None when unknown or expired."""
        conversation = self._by_state.pop(state, None)
        if conversation is None or conversation.expires_at <= now:
            return None
        return conversation

    def put_back(self, state: bytes, conversation: Conversation) -> None:
        """``conversation`` under ``state`` again: the response that took it was dropped
        unanswered, and the NAS will send it again."""
        self._by_state[state] = conversation

    def expire(self, now: float) -> None:
        for state, conversation in list(self._by_state.items()):
            if conversation.expires_at <= now:
                del self._by_state[state]

    def __len__(self) -> int:
        return len(self._by_state)
