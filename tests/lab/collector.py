"""A RADIUS accounting collector for tests: what a shaper or billing system would be to ispd's
identity feed. Run in a network namespace (``ip netns exec NS python -m tests.lab.collector``):
it answers every Accounting-Request whose Request Authenticator and Message-Authenticator are
right, and writes each one as a JSON line (attribute names, values as text) to --out; requests
that fail the checks are written with "valid": false and not answered."""

from __future__ import annotations

import argparse
import json
import socket
import struct
from ipaddress import IPv4Address
from pathlib import Path

from ispd.radius.codec import (
    Attr,
    Code,
    RadiusDecodeError,
    check_message_authenticator,
    check_request_authenticator,
    decode,
    encode_response,
)

_NUMBERS = {Attr.ACCT_STATUS_TYPE, Attr.ACCT_SESSION_TIME, Attr.ACCT_TERMINATE_CAUSE, Attr.EVENT_TIMESTAMP}
_ADDRESSES = {Attr.FRAMED_IP_ADDRESS, Attr.NAS_IP_ADDRESS}


def describe(packet_attributes: list[tuple[int, bytes]]) -> dict[str, str]:
    shown = {}
    for number, value in packet_attributes:
        name = Attr(number).name if number in Attr._value2member_map_ else str(number)
        if number in _NUMBERS and len(value) == 4:
            shown[name] = str(struct.unpack("!I", value)[0])
        elif number in _ADDRESSES and len(value) == 4:
            shown[name] = str(IPv4Address(value))
        elif number == Attr.MESSAGE_AUTHENTICATOR:
            continue
        else:
            shown[name] = value.decode("utf-8", "replace")
    return shown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="address:port")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    secret = args.secret.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, args.out.open("a") as out:
        sock.bind((host, int(port)))
        out.write(json.dumps({"listening": args.listen}) + "\n")
        out.flush()
        while True:
            data, peer = sock.recvfrom(4096)
            try:
                packet = decode(data)
            except RadiusDecodeError as exc:
                out.write(json.dumps({"valid": False, "error": str(exc)}) + "\n")
                out.flush()
                continue
            valid = (packet.code == Code.ACCOUNTING_REQUEST and check_request_authenticator(packet, secret)
                     and (not packet.has(Attr.MESSAGE_AUTHENTICATOR) or check_message_authenticator(packet, secret)))
            out.write(json.dumps({"valid": valid, **describe(packet.attributes)}) + "\n")
            out.flush()
            if valid:
                sock.sendto(encode_response(Code.ACCOUNTING_RESPONSE, packet.identifier, packet.authenticator, b"",
                                            secret, signed_with_zeros=True), peer)


if __name__ == "__main__":
    main()
