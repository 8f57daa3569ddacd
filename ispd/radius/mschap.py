"""MS-CHAP v1 and v2 for the RADIUS server: checking a response, proving ourselves, keying MPPE.

Pure functions on bytes: no RADIUS packets, no sockets, no clock. The engine takes the attribute
values out of an Access-Request, calls these, and puts the results into the Access-Accept or
Access-Reject; the codec encrypts what RFC 2548 says is encrypted (see "What goes where").

Theory of operation
-------------------
A PPP peer authenticates to the BNG with MS-CHAP; the BNG relays the exchange to us in Microsoft
vendor-specific attributes (vendor 311, RFC 2548), and we hold the subscriber's NT hash,
MD4(UTF-16LE(password)) (RFC 2759 §8.3, ``ispd.credentials.nt_hash``), never the password.

MS-CHAPv2 (RFC 2759), the common case:

1. MS-CHAP-Challenge (311/11) carries the BNG's 16-octet AuthenticatorChallenge; MS-CHAP2-Response
   (311/25, RFC 2548 §2.3.2, 50 octets) carries Ident(1) Flags(1) PeerChallenge(16) Reserved(8)
   NT-Response(24).
2. ``challenge_hash``: SHA-1(PeerChallenge + AuthenticatorChallenge + UserName)[:8] (§8.2), where
   UserName is the name the peer typed without its Windows domain (``strip_domain``).
3. ``challenge_response``: that 8-octet challenge DES-encrypted under three keys cut from the NT hash
   zero-padded to 21 octets (§8.5, §8.6); ``verify_nt_response_v2`` compares it with the peer's
   NT-Response in constant time.
4. ``authenticator_response`` (§8.7): "S=" and 40 uppercase hex digits that prove to the peer that we
   know its password too (v2 is mutual); it goes back in MS-CHAP2-Success (311/26, RFC 2548 §2.3.3)
   as ``mschap2_success_value``.
5. ``mppe_keys_v2`` (RFC 3079 §3.4): MasterKey = SHA-1(MD4(NT hash) + NT-Response + Magic)[:16],
   then one start key per direction; they go in MS-MPPE-Send-Key and MS-MPPE-Recv-Key (311/16,
   311/17), each salt-encrypted (``encrypt_mppe_key``, RFC 2548 §2.4.2).

MS-CHAPv1 (RFC 2433): MS-CHAP-Challenge is 8 octets and is itself the DES plaintext; MS-CHAP-Response
(311/1, RFC 2548 §2.1.3, 50 octets) is Ident(1) Flags(1) LM-Response(24) NT-Response(24), and the
NT-Response is ``challenge_response(challenge, nt_hash)`` (``verify_nt_response_v1``). The keys go in
MS-CHAP-MPPE-Keys (311/12) as ``mppe_keys_v1``.

On failure, MS-CHAP-Error (311/2) carries ``mschap_error_value``: "E=691 R=0 ..." (RFC 2759 §6,
RFC 2433 §8).

What goes where (server's point of view)
----------------------------------------
RFC 3079 §3.4's GetAsymmetricStartKey(MasterKey, length, IsSend, IsServer) picks Magic3 ("On the
client side, this is the receive key; on the server side, it is the send key.") for the server's
send key and Magic2 for its receive key. FreeRADIUS's rlm_mschap does the same
(``mppe_GetAsymmetricStartKey(masterkey, sendkey, 16, 1)`` uses magic3 and goes into
MS-MPPE-Send-Key; magic2 goes into MS-MPPE-Recv-Key), and RFC 2548 §2.4.2 defines MS-MPPE-Send-Key
as the key for "packets sent from the NAS to the remote host", the NAS being the server side of
PPP. So ``mppe_keys_v2`` returns ``(send_key, recv_key)`` = (Magic3 key, Magic2 key), ready for
MS-MPPE-Send-Key and MS-MPPE-Recv-Key respectively; the RFC 3079 §3.5.3 "SendStartKey128" vector is
that send key. A FreeRADIUS Access-Accept captured on 127.0.0.1 confirms it (see the tests).

MS-CHAP-MPPE-Keys (RFC 2548 §2.4.1) is 32 octets of plaintext: LM-Key(8) NT-Key(16) Padding(8).
ispd keeps no LAN Manager hash, so the LM-Key is zeros (FreeRADIUS too, given only an NT-Password).
The RFC calls the NT-Key "the first sixteen octets of the hashed Windows NT password", but what
FreeRADIUS sends (its source notes that the plain NT hash does not work in practice) and what
RFC 3079 §2 keys MS-CHAPv1's 128-bit MPPE from is the hash of the hash, MD4(NT hash). The whole
field is then encrypted like User-Password (RFC 2865 §5.2) with the Request Authenticator; that is
the codec's job, and as the field is already a multiple of 16 octets the ciphertext is 32 octets
(Vendor-Length 34). Both checked against a FreeRADIUS Access-Accept in the tests.

Inputs are checked: each function names the lengths it requires and raises ``ValueError`` for
anything else. The engine must check attribute lengths before calling (RFC 2548: MS-CHAP2-Response
and MS-CHAP-Response are 50 octets) and answer a malformed request as the RADIUS RFCs say.

Cost, measured: checking a v2 NT-Response takes about 65 µs, and with the authenticator response
and the MPPE keys about 110 µs, nearly all of it pycryptodome's per-call overhead (a DES object
costs ~14 µs to make, an MD4 ~14 µs); little enough to run on the event loop.

Deliberately not here: MS-CHAPv2 password change (MS-CHAP2-CPW, RFC 2759 §7), the LAN Manager hash
and LM-Response (deprecated by RFC 2433 §6), 40/56-bit session-key reduction and MPPE's RC4 (the
NAS's job, RFC 3079 §3.2-3.3), and EAP-MSCHAPv2's MSK.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from enum import IntEnum

from Crypto.Cipher import DES
from Crypto.Hash import MD4

from ispd.radius.codec import new_salt

AUTHENTICATOR_CHALLENGE_LENGTH = 16  # MS-CHAPv2, RFC 2759 §4
PEER_CHALLENGE_LENGTH = 16
CHALLENGE_LENGTH = 8  # MS-CHAPv1 (RFC 2433 §5) and the output of ChallengeHash (RFC 2759 §8.2)
NT_HASH_LENGTH = 16
NT_RESPONSE_LENGTH = 24
AUTHENTICATOR_RESPONSE_LENGTH = 42  # b"S=" + 40 hex digits
REQUEST_AUTHENTICATOR_LENGTH = 16

# A Vendor-Specific attribute holds at most 255 - 2 (type, length) - 4 (vendor id) - 2 (vendor
# type, vendor length) = 247 octets of value; RFC 2548 attributes are never split across several.
MAX_VSA_VALUE_LENGTH = 247
# RFC 2548 §2.4.2: Salt(2) then the encrypted Key-Length(1) + Key + Padding, a multiple of 16; 245
# octets after the salt leave room for 15 blocks, so at most 15 * 16 - 1 = 239 octets of key.
MAX_MPPE_KEY_LENGTH = 239

# RFC 2759 §8.7
_MAGIC_SERVER_SIGNING = b"Magic server to client signing constant"
_MAGIC_PAD = b"Pad to make it do more than one iteration"
# RFC 3079 §3.4
_MAGIC_MASTER_KEY = b"This is the MPPE Master Key"
_MAGIC_CLIENT_SEND = b"On the client side, this is the send key; on the server side, it is the receive key."
_MAGIC_CLIENT_RECV = b"On the client side, this is the receive key; on the server side, it is the send key."
_SHS_PAD1 = bytes(40)
_SHS_PAD2 = b"\xf2" * 40


class MSCHAPErrorCode(IntEnum):
    """The "E=" codes of an MS-CHAP Failure (RFC 2433 §8, RFC 2759 §6)."""

    RESTRICTED_LOGON_HOURS = 646
    ACCT_DISABLED = 647
    PASSWD_EXPIRED = 648
    NO_DIALIN_PERMISSION = 649
    AUTHENTICATION_FAILURE = 691
    CHANGING_PASSWORD = 709


def _require_length(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise ValueError(f"{name} must be {length} octets, not {len(value)}")


def _require_ident(ident: int) -> None:
    if not 0 <= ident <= 0xFF:
        raise ValueError(f"ident must be an octet (0-255), not {ident}")


# DesEncrypt (RFC 2759 §8.6) takes a 7-octet key; DES wants 8 octets with a parity bit at the end
# of each. Spread the 56 bits seven to an octet and set each low bit for odd parity, as RFC 2759
# §9.3 shows (DES ignores parity, but setting it keeps us byte-for-byte with the RFC's example).
_WITH_ODD_PARITY = bytes((seven << 1) | (0 if bin(seven).count("1") % 2 else 1) for seven in range(128))


def _des_key(key7: bytes) -> bytes:
    bits = int.from_bytes(key7, "big")
    return bytes(_WITH_ODD_PARITY[(bits >> shift) & 0x7F] for shift in range(49, -1, -7))


def _md4(data: bytes) -> bytes:
    return MD4.new(data).digest()


def strip_domain(username: bytes) -> bytes:
    """The account name without a Windows domain prefix: ``b"BIGCO\\\\johndoe"`` -> ``b"johndoe"``.

    RFC 2759 §4 and §8.2: the peer may prefix its name with "DOMAIN\\", and ChallengeHash takes the
    name without it. Like FreeRADIUS (``with_ntdomain_hack``), everything up to the first backslash
    goes; a name without one (``user``, ``user@realm``) is returned as it is.
    """
    _, backslash, account = username.partition(b"\\")
    return account if backslash else username


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, username: bytes) -> bytes:
    """RFC 2759 §8.2 ChallengeHash: the 8-octet challenge that MS-CHAPv2 feeds to DES.

    ``peer_challenge`` and ``authenticator_challenge`` are 16 octets each; ``username`` is the
    name without its domain (``strip_domain``), of any length.
    """
    _require_length("peer_challenge", peer_challenge, PEER_CHALLENGE_LENGTH)
    _require_length("authenticator_challenge", authenticator_challenge, AUTHENTICATOR_CHALLENGE_LENGTH)
    return hashlib.sha1(peer_challenge + authenticator_challenge + username).digest()[:CHALLENGE_LENGTH]


def challenge_response(challenge: bytes, nt_hash: bytes) -> bytes:
    """RFC 2759 §8.5 ChallengeResponse (= RFC 2433 §A.7): 24 octets.

    ``challenge`` is 8 octets, ``nt_hash`` 16. This is MS-CHAPv1's NT-Response as it stands
    (RFC 2433 §A.5), and MS-CHAPv2's with the challenge from ``challenge_hash``.
    """
    _require_length("challenge", challenge, CHALLENGE_LENGTH)
    _require_length("nt_hash", nt_hash, NT_HASH_LENGTH)
    padded = nt_hash + bytes(5)  # "zero-padded to 21 octets": three 7-octet DES keys
    return b"".join(
        DES.new(_des_key(padded[start : start + 7]), DES.MODE_ECB).encrypt(challenge) for start in (0, 7, 14)
    )


def nt_response_v2(authenticator_challenge: bytes, peer_challenge: bytes, username: bytes, nt_hash: bytes) -> bytes:
    """RFC 2759 §8.1 GenerateNTResponse from the NT hash: the 24 octets a v2 peer sends.

    Lengths as for ``challenge_hash`` and ``challenge_response``.
    """
    return challenge_response(challenge_hash(peer_challenge, authenticator_challenge, username), nt_hash)


def verify_nt_response_v2(
    nt_response: bytes, authenticator_challenge: bytes, peer_challenge: bytes, username: bytes, nt_hash: bytes
) -> bool:
    """Whether a v2 peer's NT-Response (24 octets) proves it knows the password behind ``nt_hash``.

    The comparison takes the same time wherever the first difference is.
    """
    _require_length("nt_response", nt_response, NT_RESPONSE_LENGTH)
    expected = nt_response_v2(authenticator_challenge, peer_challenge, username, nt_hash)
    return hmac.compare_digest(expected, nt_response)


def verify_nt_response_v1(nt_response: bytes, challenge: bytes, nt_hash: bytes) -> bool:
    """Whether a v1 peer's NT-Response (24 octets) answers the 8-octet ``challenge`` (RFC 2433 §6)."""
    _require_length("nt_response", nt_response, NT_RESPONSE_LENGTH)
    return hmac.compare_digest(challenge_response(challenge, nt_hash), nt_response)


def authenticator_response(
    nt_hash: bytes, nt_response: bytes, peer_challenge: bytes, authenticator_challenge: bytes, username: bytes
) -> bytes:
    """RFC 2759 §8.7 GenerateAuthenticatorResponse: ``b"S="`` and 40 uppercase hex digits.

    ``nt_hash`` 16 octets, ``nt_response`` 24 (the peer's, already verified), the challenges 16
    each, ``username`` without its domain. RFC 2759 §5: the hex digits MUST be uppercase.
    """
    _require_length("nt_hash", nt_hash, NT_HASH_LENGTH)
    _require_length("nt_response", nt_response, NT_RESPONSE_LENGTH)
    digest = hashlib.sha1(_md4(nt_hash) + nt_response + _MAGIC_SERVER_SIGNING).digest()
    challenge = challenge_hash(peer_challenge, authenticator_challenge, username)
    digest = hashlib.sha1(digest + challenge + _MAGIC_PAD).digest()
    return b"S=" + digest.hex().upper().encode("ascii")


def mschap2_success_value(ident: int, auth_response: bytes) -> bytes:
    """The MS-CHAP2-Success value (RFC 2548 §2.3.3): the PPP ident octet, then the 42-octet "S=...".

    ``ident`` is the Ident of the MS-CHAP2-Response; ``auth_response`` what
    ``authenticator_response`` returned. Nothing follows it: the NAS adds any " M=" message itself
    when it builds the PPP Success packet (RFC 2759 §5).
    """
    _require_ident(ident)
    _require_length("auth_response", auth_response, AUTHENTICATOR_RESPONSE_LENGTH)
    if not auth_response.startswith(b"S=") or auth_response[2:].translate(None, b"0123456789ABCDEF"):
        raise ValueError('auth_response must be "S=" and 40 uppercase hexadecimal digits')
    return bytes((ident,)) + auth_response


def mschap_error_value(
    ident: int,
    code: int = 691,
    retry: bool = False,
    challenge: bytes | None = None,
    version: int = 3,
    message: str = "Authentication failed",
) -> bytes:
    """The MS-CHAP-Error value (RFC 2548 §2.1.5): the ident octet, then "E=691 R=0 C=... V=3 M=...".

    ``ident`` is the Ident of the MS-CHAP(2)-Response being refused. The text is RFC 2759 §6's
    (RFC 2433 §8's for v1): ``code`` (``MSCHAPErrorCode``), R=1 when ``retry`` lets the peer try
    again, C= a challenge for that retry in hex, V= the password-change protocol version (3 for
    v2; pass 2 for a v1 peer, RFC 2433 §8), M= a human-readable ``message`` (UTF-8; left out when
    empty; v1 peers ignore it, RFC 2433 §8). FreeRADIUS 3.2 sends exactly this shape.

    ``challenge`` is 16 octets (v2) or 8 (v1), written in lowercase hex as FreeRADIUS writes it.
    None makes a random one, 16 octets when ``version`` is 3 or more (v2) and 8 otherwise:
    RFC 2759 §6 says C= MUST be present, and nothing needs to remember it, since a retry comes
    back in a new Access-Request that carries the challenge the NAS gave the peer.

    Raises ``ValueError`` for a bad ident, a negative code or version, a challenge of another
    length, or a value that would not fit in one Vendor-Specific attribute (247 octets).
    """
    _require_ident(ident)
    if code < 0 or version < 0:
        raise ValueError("code and version must not be negative")
    fields = [f"E={int(code)}", f"R={1 if retry else 0}"]
    if challenge is None:
        challenge = os.urandom(AUTHENTICATOR_CHALLENGE_LENGTH if version >= 3 else CHALLENGE_LENGTH)
    elif len(challenge) not in (AUTHENTICATOR_CHALLENGE_LENGTH, CHALLENGE_LENGTH):
        raise ValueError(f"challenge must be 16 octets (v2) or 8 (v1), not {len(challenge)}")
    fields.append(f"C={challenge.hex()}")
    fields.append(f"V={int(version)}")
    if message:
        fields.append(f"M={message}")
    value = bytes((ident,)) + " ".join(fields).encode("utf-8")
    if len(value) > MAX_VSA_VALUE_LENGTH:
        raise ValueError(f"the MS-CHAP-Error value would be {len(value)} octets, over {MAX_VSA_VALUE_LENGTH}")
    return value


def mppe_keys_v2(nt_hash: bytes, nt_response: bytes, key_length: int = 16) -> tuple[bytes, bytes]:
    """RFC 3079 §3.4 MPPE start keys for MS-CHAPv2, as ``(send_key, recv_key)`` for the server.

    ``send_key`` goes into MS-MPPE-Send-Key, ``recv_key`` into MS-MPPE-Recv-Key (see the module
    docstring for why). ``nt_hash`` 16 octets, ``nt_response`` the peer's 24; ``key_length`` 8 to
    16 (RFC 3079 §3.4: 8 for 40- and 56-bit MPPE, 16 for 128-bit; send 16 and let the NAS cut,
    RFC 2548 §2.4.2, as FreeRADIUS does).
    """
    _require_length("nt_hash", nt_hash, NT_HASH_LENGTH)
    _require_length("nt_response", nt_response, NT_RESPONSE_LENGTH)
    if not 8 <= key_length <= 16:
        raise ValueError(f"key_length must be 8 to 16 octets, not {key_length}")
    # GetMasterKey (RFC 3079 §3.4)
    master_key = hashlib.sha1(_md4(nt_hash) + nt_response + _MAGIC_MASTER_KEY).digest()[:16]
    # GetAsymmetricStartKey(MasterKey, key_length, IsSend, IsServer=TRUE): Magic3 for IsSend,
    # Magic2 otherwise; the client, with IsServer=FALSE, makes the same two keys the other way
    # round, so our send key is its receive key.
    send_key = hashlib.sha1(master_key + _SHS_PAD1 + _MAGIC_CLIENT_RECV + _SHS_PAD2).digest()[:key_length]
    recv_key = hashlib.sha1(master_key + _SHS_PAD1 + _MAGIC_CLIENT_SEND + _SHS_PAD2).digest()[:key_length]
    return send_key, recv_key


def mppe_keys_v1(nt_hash: bytes) -> bytes:
    """The 32-octet MS-CHAP-MPPE-Keys plaintext for MS-CHAPv1 (RFC 2548 §2.4.1).

    LM-Key: 8 zero octets (no LAN Manager hash is kept); NT-Key: MD4(``nt_hash``), the
    "PasswordHashHash" that RFC 3079 §2 keys MPPE from and that FreeRADIUS sends; Padding: 8 zero
    octets. Encrypt it as User-Password (RFC 2865 §5.2) before it goes on the wire.
    """
    _require_length("nt_hash", nt_hash, NT_HASH_LENGTH)
    return bytes(8) + _md4(nt_hash) + bytes(8)


# RFC 2548 §2.4.2: every salt in one Access-Accept MUST differ. The engine encrypts the Send and
# Recv keys one right after the other, so, as FreeRADIUS does, four bits of the salt come from a
# counter (two consecutive salts always differ) and the other eleven are random: the codec's, whose
# counter also salts the Tunnel-Passwords and MPPE keys of a plan's attributes in the same reply.
_fresh_salt = new_salt


def _salted_keystream_xor(
    data: bytes, secret: bytes, request_authenticator: bytes, salt: bytes, *, decrypt: bool
) -> bytes:
    # b(1) = MD5(S + R + A), b(i) = MD5(S + c(i-1)); c(i) = p(i) xor b(i). The chain runs on the
    # ciphertext, which is the input when decrypting and the output when encrypting.
    out = bytearray()
    previous = request_authenticator + salt
    for start in range(0, len(data), 16):
        block = data[start : start + 16]
        pad = hashlib.md5(secret + previous).digest()
        result = (int.from_bytes(block, "big") ^ int.from_bytes(pad, "big")).to_bytes(16, "big")
        out += result
        previous = block if decrypt else result
    return bytes(out)


def _check_secret_and_authenticator(secret: bytes, request_authenticator: bytes) -> None:
    if not secret:
        raise ValueError("the RADIUS shared secret must not be empty")
    _require_length("request_authenticator", request_authenticator, REQUEST_AUTHENTICATOR_LENGTH)


def encrypt_mppe_key(key: bytes, secret: bytes, request_authenticator: bytes, salt: bytes | None = None) -> bytes:
    """The MS-MPPE-Send-Key or MS-MPPE-Recv-Key value (RFC 2548 §2.4.2): Salt(2) + encrypted String.

    The String is Key-Length(1) + ``key`` + zero padding to a multiple of 16, encrypted with the
    shared ``secret`` and the 16-octet Request Authenticator of the Access-Request being answered.
    ``key`` is 1 to 239 octets (one attribute). ``salt`` is 2 octets with the high bit set; None
    makes a fresh one that differs from the previous call's, so two calls in a row give one
    Access-Accept its two distinct salts. A 16-octet key gives 34 octets.
    """
    if not 1 <= len(key) <= MAX_MPPE_KEY_LENGTH:
        raise ValueError(f"key must be 1 to {MAX_MPPE_KEY_LENGTH} octets, not {len(key)}")
    _check_secret_and_authenticator(secret, request_authenticator)
    if salt is None:
        salt = _fresh_salt()
    elif len(salt) != 2 or not salt[0] & 0x80:
        raise ValueError("salt must be 2 octets with the most significant bit set (RFC 2548 §2.4.2)")
    plaintext = bytes((len(key),)) + key
    plaintext += bytes(-len(plaintext) % 16)
    return salt + _salted_keystream_xor(plaintext, secret, request_authenticator, salt, decrypt=False)


def decrypt_mppe_key(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """The key inside an MS-MPPE-Send-Key or MS-MPPE-Recv-Key value: the inverse of ``encrypt_mppe_key``.

    ``value`` is Salt(2) + a multiple of 16 octets (at least one block). The salt's high bit is not
    insisted on, and the padding is not checked (RFC 2548 only recommends zeros). Raises
    ``ValueError`` when the lengths are wrong or the Key-Length octet points past the end, which
    is also what a wrong secret usually looks like.
    """
    _check_secret_and_authenticator(secret, request_authenticator)
    if len(value) < 18 or (len(value) - 2) % 16:
        raise ValueError(f"an MS-MPPE key value is 2 + 16n octets (n >= 1), not {len(value)}")
    plaintext = _salted_keystream_xor(value[2:], secret, request_authenticator, value[:2], decrypt=True)
    key_length = plaintext[0]
    if key_length + 1 > len(plaintext):
        raise ValueError("the Key-Length octet is longer than the attribute (wrong shared secret?)")
    return plaintext[1 : 1 + key_length]
