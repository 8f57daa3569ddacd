"""A DHCP relay as BNGs run it, for tests: option 82 with a circuit-id and the server identifier
override (RFC 5107, sub-option 11), which ISC dhcrelay cannot add.

With the override the server names the relay's address as its identifier, so a renewing client
unicasts to the relay, which relays the renewal like any other request: the BNG sees every
renewal (to keep its subscriber state) and the client never reaches the server directly.

Run inside the relay's namespace: ``python -m tests.lab.bngrelay --downstream IF --address A
--server S``. It prints one line per datagram it relays ("request DISCOVER from 0.0.0.0",
"request REQUEST from 198.18.1.100", "reply ACK to 198.18.1.100"), and "ready" once its sockets
are open.
"""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import replace
from ipaddress import IPv4Address

from ispd.dhcp.codec import BOOTREPLY, BOOTREQUEST, DHCPPacket, decode, encode
from ispd.dhcp.options import Option, RelaySubOption, encode_suboptions

SERVER_PORT, CLIENT_PORT = 67, 68
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def relayed_request(packet: DHCPPacket, address: IPv4Address, circuit_id: bytes, override: bool) -> DHCPPacket:
    suboptions = [(RelaySubOption.CIRCUIT_ID, circuit_id)]
    if override:
        suboptions.append((RelaySubOption.SERVER_ID_OVERRIDE, address.packed))
    options = [*_without_option82(packet), (Option.RELAY_AGENT_INFO, encode_suboptions(suboptions))]
    return replace(packet, hops=packet.hops + 1, giaddr=address, options=tuple(options))


def _without_option82(packet: DHCPPacket) -> tuple[tuple[int, bytes], ...]:
    return tuple((c, v) for c, v in packet.options if c != Option.RELAY_AGENT_INFO)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--downstream", required=True, help="the clients' interface")
    parser.add_argument("--address", required=True, help="the relay's address on it (giaddr)")
    parser.add_argument("--server", required=True)
    parser.add_argument("--no-override", action="store_true", help="leave sub-option 11 out")
    args = parser.parse_args()
    address, server = IPv4Address(args.address), args.server

    # One socket for everything that comes to port 67: clients' broadcasts and unicasts, and
    # the server's replies to giaddr. Another, on the clients' interface, sends them replies.
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    listener.bind(("0.0.0.0", SERVER_PORT))
    downstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    downstream.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    downstream.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, args.downstream.encode())
    print("ready", flush=True)
    while True:
        data, (source, _) = listener.recvfrom(4096)
        try:
            packet = decode(data)
        except ValueError as error:
            print(f"dropped: {error}", flush=True)
            continue
        kind = packet.message_type.name if packet.message_type is not None else "?"
        if packet.op == BOOTREQUEST and source != server:
            print(f"request {kind} from {source}", flush=True)
            relayed = relayed_request(packet, address, args.downstream.encode(), not args.no_override)
            listener.sendto(encode(relayed), (server, SERVER_PORT))
        elif packet.op == BOOTREPLY and source == server:
            reply = replace(packet, options=_without_option82(packet))
            to = str(packet.ciaddr) if packet.ciaddr != IPv4Address(0) else "255.255.255.255"
            print(f"reply {kind} to {to}", flush=True)
            downstream.sendto(encode(reply), (to, CLIENT_PORT))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
