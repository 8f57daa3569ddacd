"""Options by code (`[[dhcp.option]]` and on subnets, pools and client classes) and client classes
(`[[dhcp.client_class]]`): what the config accepts, and what the engine sends to whom."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from pydantic import ValidationError

from ispd.dhcp.config import DHCPConfig, DHCPOption
from ispd.dhcp.options import DHCPMessageType, Option
from tests.dhcp.test_engine import MAC_A, MAC_B, SERVER, Lab, message

ACS_URL = "https://acs.isp.example:7547/"
PRL = Option.PARAMETER_REQUEST_LIST
VENDOR = Option.VENDOR_CLASS_ID
MAC_PLAIN = bytes.fromhex("04005e100002")  # in no class


def config(*, pool_extra: dict[str, Any] | None = None, **top: Any) -> DHCPConfig:
    base: dict[str, Any] = {
        "enabled": True,
        "interfaces": ["eth1"],
        "subnet": [{
            "network": "198.18.0.0/24", "interface": "eth1", "routers": ["198.18.0.1"],
            "dns_servers": ["198.18.0.1"],
            "option": [{"code": 66, "text": "tftp.subnet.example"}],
            "pool": [
                {"name": "lan", "range": "198.18.0.100 - 198.18.0.109", **(pool_extra or {})},
                {"name": "stb", "range": "198.18.0.150 - 198.18.0.159", "client_classes": ["iptv"]},
            ],
        }],
        "option": [
            {"code": 2, "int32": -3600},
            {"code": 66, "text": "tftp.global.example"},
            {"code": 119, "domains": ["isp.example", "lab.example"], "always_send": True},
        ],
        "client_class": [
            {"name": "tr069", "vendor_class": ["dslforum.org"],
             "option": [{"code": 43, "suboptions": [{"code": 1, "text": ACS_URL}, {"code": 2, "text": "ispd"}]}]},
            {"name": "iptv", "vendor_class": ["IPTV-STB"], "mac_prefix": ["02:00:5e"],
             "option": [{"code": 66, "text": "tftp.iptv.example", "always_send": True}]},
            {"name": "any-02", "mac_prefix": ["02"], "option": [{"code": 66, "text": "tftp.later.example"}]},
        ],
    }
    base.update(top)
    return DHCPConfig.model_validate(base)


def offer(lab: Lab, mac: bytes = MAC_A, *, asked: bytes | None = bytes((1, 3, 43, 66)),
          vendor: bytes | None = None) -> Any:
    extra: list[tuple[int, bytes]] = []
    if asked is not None:
        extra.append((PRL, asked))
    if vendor is not None:
        extra.append((VENDOR, vendor))
    outcome = lab.send(message(DHCPMessageType.DISCOVER, mac, extra=tuple(extra)))
    assert outcome.reply is not None, outcome.ignored
    return outcome.reply.packet


def test_an_option_s_forms_encode_as_their_rfcs_say() -> None:
    cases: list[tuple[dict[str, Any], bytes]] = [
        ({"code": 66, "text": "tftp.example"}, b"tftp.example"),
        ({"code": 150, "addresses": ["198.18.0.5", "198.18.0.6"]}, bytes((198, 18, 0, 5, 198, 18, 0, 6))),
        ({"code": 2, "int32": -3600}, (-3600).to_bytes(4, "big", signed=True)),
        ({"code": 23, "uint8": 64}, b"\x40"),
        ({"code": 22, "uint16": 576}, b"\x02\x40"),
        ({"code": 24, "uint32": 600}, b"\x00\x00\x02\x58"),
        ({"code": 19, "boolean": False}, b"\x00"),
        ({"code": 224, "hex": "01:02:ab"}, b"\x01\x02\xab"),
        ({"code": 224, "hex": "0x0102ab"}, b"\x01\x02\xab"),
        ({"code": 224, "hex": ""}, b""),
        ({"code": 119, "domains": ["a.example.", "b"]}, b"\x01a\x07example\x00\x01b\x00"),
        ({"code": 43, "suboptions": [{"code": 1, "text": "x"}, {"code": 4, "uint16": 1}]},
         b"\x01\x01x\x04\x02\x00\x01"),
    ]
    for given, wire in cases:
        assert DHCPOption.model_validate(given).encoded() == wire, given


@pytest.mark.parametrize(("given", "says"), [
    ({"code": 66}, "exactly one of"),
    ({"code": 66, "text": "a", "hex": "01"}, "got text and hex"),
    ({"code": 1, "hex": "ffffff00"}, "subnet mask"),
    ({"code": 51, "uint32": 60}, "set lease_seconds"),
    ({"code": 82, "hex": "0100"}, "relay agent information"),
    ({"code": 0, "hex": "00"}, "greater than or equal to 1"),
    ({"code": 255, "hex": "00"}, "less than or equal to 254"),
    ({"code": 224, "hex": "0g"}, "not pairs of hex digits"),
    ({"code": 119, "domains": ["a..example"]}, "label must be 1 to 63"),
    ({"code": 119, "domains": ["bücher.example"]}, "domains"),
    ({"code": 23, "uint8": 256}, "less than or equal to 255"),
    ({"code": 23, "uint8": True}, "valid integer"),
    ({"code": 2, "int32": "3600"}, "valid integer"),
    ({"code": 19, "boolean": 1}, "valid boolean"),
    ({"code": 119, "domains": [".".join(["a" * 63] * 4)]}, "at most 255 bytes"),
    ({"code": 43, "suboptions": [{"code": 1, "text": "a"}, {"code": 1, "text": "b"}]}, "sub-option 1 is given twice"),
    ({"code": 43, "suboptions": [{"code": 1, "text": "a" * 256}]}, "256 bytes, longer than 255"),
    ({"code": 224, "text": "a" * 1025}, "1025 bytes, longer than 1024"),
    ({"code": 224, "text": "a", "always": True}, "Extra inputs are not permitted"),
])
def test_a_bad_option_is_refused_with_what_to_fix(given: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        DHCPOption.model_validate(given)


@pytest.mark.parametrize(("change", "says"), [
    ({"option": [{"code": 66, "text": "a"}, {"code": 66, "text": "b"}]}, "option 66 is given twice"),
    ({"subnet_option": [{"code": 6, "addresses": ["198.18.0.2"]}]}, "option 6 and dns_servers are the same"),
    ({"pool_extra": {"client_classes": ["nobody"]}}, "client class 'nobody' is not defined"),
    ({"client_class": [{"name": "x", "option": []}]}, "say who is in it"),
    ({"client_class": [{"name": "x", "mac_prefix": ["zz"]}]}, "mac_prefix 'zz'"),
    ({"client_class": [{"name": "x", "vendor_class": [""]}]}, "at least 1 character"),
    ({"client_class": [{"name": "x", "mac_prefix": ["02"]}, {"name": "x", "mac_prefix": ["04"]}]},
     "client class 'x' is defined twice"),
])
def test_a_bad_option_list_or_class_is_refused(change: dict[str, Any], says: str) -> None:
    subnet_option = change.pop("subnet_option", None)
    pool_extra = change.pop("pool_extra", None)
    if "client_class" in change:
        change.setdefault("subnet", [{"network": "198.18.0.0/24", "interface": "eth1",
                                      "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.109"}]}])
    with pytest.raises(ValidationError, match=says):
        if subnet_option is not None:
            DHCPConfig.model_validate({
                "enabled": True, "interfaces": ["eth1"],
                "subnet": [{"network": "198.18.0.0/24", "interface": "eth1", "dns_servers": ["198.18.0.1"],
                            "option": subnet_option,
                            "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.109"}]}]})
        else:
            config(pool_extra=pool_extra, **change)


def test_the_most_specific_place_gives_an_option_and_unasked_ones_go_only_when_always_sent() -> None:
    lab = Lab(config())
    plain = offer(lab, MAC_PLAIN, asked=bytes((1, 3, 2, 66)))
    assert plain.option(66) == b"tftp.subnet.example"  # the subnet's over the global one
    assert plain.option(2) == (-3600).to_bytes(4, "big", signed=True)  # global, asked for
    assert plain.option(119) == b"\x03isp\x07example\x00\x03lab\x07example\x00"  # not asked: always_send
    assert plain.option(43) is None  # no class
    codes = [code for code, _ in plain.options]
    assert codes.index(66) < codes.index(119)  # what was asked comes first
    unasked = offer(lab, MAC_PLAIN, asked=bytes((1, 3)))
    assert unasked.option(66) is None and unasked.option(2) is None and unasked.option(119) is not None
    everything = offer(lab, MAC_PLAIN, asked=None)  # no request list: everything we have
    assert everything.option(66) == b"tftp.subnet.example" and everything.option(2) is not None


def test_a_pool_s_option_replaces_the_subnet_s_and_its_setting_replaces_a_global_option() -> None:
    lab = Lab(config(pool_extra={"option": [{"code": 66, "text": "tftp.pool.example"}]},
                     option=[{"code": 6, "addresses": ["198.18.0.53"], "always_send": True}]))
    packet = offer(lab, MAC_PLAIN, asked=bytes((1, 3, 66)))
    assert packet.option(66) == b"tftp.pool.example"
    # The subnet's dns_servers replace the global option 6, always_send with it: not asked, not sent.
    assert packet.option(Option.DNS_SERVERS) is None
    assert offer(lab, MAC_PLAIN, asked=bytes((6,))).option(Option.DNS_SERVERS) == IPv4Address("198.18.0.1").packed


def test_a_class_s_options_go_to_its_members_over_the_pool_s() -> None:
    lab = Lab(config())
    cpe = offer(lab, bytes.fromhex("04005e000001"), vendor=b"dslforum.org TR-069 router")
    assert cpe.option(43) == b"\x01" + bytes((len(ACS_URL),)) + ACS_URL.encode() + b"\x02\x04ispd"
    assert cpe.option(66) == b"tftp.subnet.example"  # tr069 sets no 66; any-02 does not match 04:...
    other = offer(lab, bytes.fromhex("04005e000002"), vendor=b"udhcp 1.35.0")
    assert other.option(43) is None


def test_of_two_classes_the_first_gives_a_code_and_a_pool_is_kept_for_its_class() -> None:
    lab = Lab(config())
    # MAC_A (02:00:5e:...) is in any-02 always, and in iptv when it says it is a set-top box.
    stb = offer(lab, MAC_A, asked=bytes((1, 3)), vendor=b"IPTV-STB v2")
    assert stb.option(66) == b"tftp.iptv.example"  # iptv comes before any-02; always_send
    assert IPv4Address("198.18.0.150") <= stb.yiaddr <= IPv4Address("198.18.0.159")
    laptop = offer(lab, MAC_B, asked=bytes((1, 3, 66)), vendor=b"MSFT 5.0")
    assert laptop.option(66) == b"tftp.later.example"
    assert IPv4Address("198.18.0.100") <= laptop.yiaddr <= IPv4Address("198.18.0.109")


def test_a_client_outside_a_pool_s_class_cannot_request_its_address() -> None:
    lab = Lab(config())
    request = message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.150")  # INIT-REBOOT into the stb pool
    outcome = lab.send(request)
    assert outcome.reply is not None and outcome.reply.packet.message_type is DHCPMessageType.NAK
    member = message(DHCPMessageType.REQUEST, MAC_A, requested="198.18.0.151",
                     extra=((VENDOR, b"IPTV-STB"),))
    outcome = lab.send(member)
    assert outcome.reply is not None and outcome.reply.packet.message_type is DHCPMessageType.ACK
    assert outcome.reply.packet.yiaddr == IPv4Address("198.18.0.151")


def test_class_options_reach_an_inform_and_the_server_id_stays_ours() -> None:
    lab = Lab(config())
    inform = message(DHCPMessageType.INFORM, bytes.fromhex("04005e000009"), ciaddr="198.18.0.5",
                     extra=((VENDOR, b"dslforum.org"), (PRL, bytes((43,)))))
    outcome = lab.send(inform)
    assert outcome.reply is not None and outcome.reply.packet.option(43) is not None
    assert outcome.reply.packet.option(Option.SERVER_ID) == SERVER.packed


def test_a_reload_brings_new_options_and_classes() -> None:
    lab = Lab(config())
    assert offer(lab, MAC_B, asked=bytes((66,))).option(66) == b"tftp.later.example"
    lab.engine.reconfigure(config(client_class=[{"name": "iptv", "vendor_class": ["IPTV-STB"]}]))
    assert offer(lab, MAC_B, asked=bytes((66,))).option(66) == b"tftp.subnet.example"


def test_a_class_s_options_add_to_a_walled_garden_pool_s_but_replace_none() -> None:
    """A class's DNS servers (or routers) would lead a suspended subscriber's device out of the
    garden, whose DNS is what sends it to the portal: there the pool's own stay."""
    from tests.dhcp.test_engine import config as engine_config

    classes = [{"name": "own-dns", "mac_prefix": ["02:00:5e"],
                "option": [{"code": 6, "addresses": ["192.0.2.53"], "always_send": True},
                           {"code": 3, "addresses": ["198.18.0.9"]},
                           {"code": 43, "hex": "0101ff", "always_send": True}]}]
    garden = Lab(engine_config(unknown_clients="walled-garden", client_class=classes))
    packet = offer(garden, MAC_A, asked=bytes((1, 3, 6)))
    assert IPv4Address("198.18.0.200") <= packet.yiaddr <= IPv4Address("198.18.0.201")
    assert packet.option(Option.DNS_SERVERS) == IPv4Address("198.18.0.250").packed  # the garden's
    assert packet.option(Option.ROUTERS) == IPv4Address("198.18.0.1").packed
    assert packet.option(43) == b"\x01\x01\xff"  # added: the pool sends no 43
    served = Lab(engine_config(client_class=classes))  # out of the garden the class's win
    packet = offer(served, MAC_A, asked=bytes((1, 3)))
    assert packet.option(Option.DNS_SERVERS) == IPv4Address("192.0.2.53").packed
    assert packet.option(Option.ROUTERS) == IPv4Address("198.18.0.9").packed


@pytest.mark.parametrize("max_size", [None, 65535])
def test_large_options_never_make_a_reply_larger_than_an_ethernet_frame(max_size: int | None) -> None:
    """Without option 57 (or with a large one) a reply had no bound: two 1 KiB options sent
    always made a 2.3 kB datagram, which cannot be written to the link (the offer never reached
    the client). What does not fit goes, the essential options stay."""
    from ispd.dhcp.codec import encode

    big = [{"code": code, "text": "x" * 1000, "always_send": True} for code in (224, 225)]
    lab = Lab(config(option=big))
    extra: tuple[tuple[int, bytes], ...] = ((PRL, bytes((1, 3, 66))),)
    if max_size is not None:
        extra += ((Option.MAX_MESSAGE_SIZE, max_size.to_bytes(2, "big")),)
    outcome = lab.send(message(DHCPMessageType.DISCOVER, MAC_PLAIN, extra=extra))
    assert outcome.reply is not None
    packet = outcome.reply.packet
    assert 28 + len(encode(packet)) <= 1500
    assert packet.option(224) is not None and packet.option(225) is None  # the last one went
    for code in (Option.MESSAGE_TYPE, Option.SERVER_ID, Option.LEASE_TIME, Option.SUBNET_MASK, Option.ROUTERS):
        assert packet.option(code) is not None, code
    assert packet.option(66) == b"tftp.subnet.example"


def test_a_router_given_as_option_3_is_checked_as_routers_are() -> None:
    """Kea's option-data writes routers as option 3: outside the subnet it is refused, as
    `routers` is, on the subnet and for every subnet that sends the global one."""
    subnet = {"network": "198.18.0.0/24", "interface": "eth1",
              "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.109"}]}
    base = {"enabled": True, "interfaces": ["eth1"]}
    with pytest.raises(ValidationError, match=r"router 198\.18\.1\.1 is not inside 198\.18\.0\.0/24"):
        DHCPConfig.model_validate({**base, "subnet": [
            {**subnet, "option": [{"code": 3, "addresses": ["198.18.1.1"]}]}]})
    with pytest.raises(ValidationError, match=r"\[\[dhcp.option\]\] 3: router 198\.18\.1\.1 is not inside"):
        DHCPConfig.model_validate({**base, "subnet": [subnet], "option": [{"code": 3, "addresses": ["198.18.1.1"]}]})
    # A subnet with routers of its own does not send the global option 3.
    DHCPConfig.model_validate({**base, "subnet": [{**subnet, "routers": ["198.18.0.1"]}],
                               "option": [{"code": 3, "addresses": ["198.18.1.1"]}]})


@pytest.mark.parametrize("given", [
    {"code": 150, "text": "198.18.0.5"},  # Kea's data = "198.18.0.5", as text: sent as 10 characters
    {"code": 6, "text": "198.18.0.53, 198.18.0.54"},
    {"code": 3, "hex": "c61200"},
    {"code": 42, "uint32": 3323068417},
])
def test_an_address_list_option_takes_addresses(given: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=rf"option {given['code']} holds IPv4 addresses \(.+\): give them as addresses"):
        DHCPOption.model_validate(given)
    assert DHCPOption.model_validate({"code": given["code"], "hex": "c6120005"}).encoded() == bytes((198, 18, 0, 5))


def test_a_class_by_the_relay_s_circuit_id_keeps_its_members_through_a_renewal_past_the_relay() -> None:
    """An OLT's business ports (circuit-ids "olt1 biz/...") in a pool of their own; a renewal that
    comes straight from the client (no option 82) is on the line its lease was granted on."""
    cfg = DHCPConfig.model_validate({
        "enabled": True, "interfaces": ["eth1"],
        "subnet": [{"network": "198.18.1.0/24", "routers": ["198.18.1.1"], "pool": [
            {"name": "home", "range": "198.18.1.100 - 198.18.1.149"},
            {"name": "biz", "range": "198.18.1.200 - 198.18.1.209", "client_classes": ["business"]}]}],
        "client_class": [{"name": "business", "circuit_id": ["olt1 biz/"],
                          "option": [{"code": 66, "text": "tftp.biz.example", "always_send": True}]},
                         {"name": "by-remote", "remote_id": ["0x00aa"], "mac_prefix": ["02:00"]}],
    })
    lab = Lab(cfg)

    def relayed(kind: DHCPMessageType, mac: bytes, circuit: bytes, **kw: Any) -> Any:
        info = bytes((1, len(circuit))) + circuit + bytes((2, 2)) + b"\x00\xaa"
        outcome = lab.send(message(kind, mac, giaddr="198.18.1.1", extra=((Option.RELAY_AGENT_INFO, info),), **kw))
        assert outcome.reply is not None, outcome.ignored
        return outcome.reply.packet

    biz = relayed(DHCPMessageType.DISCOVER, MAC_A, b"olt1 biz/1/3:100")
    assert IPv4Address("198.18.1.200") <= biz.yiaddr <= IPv4Address("198.18.1.209") and biz.option(66)
    ack = relayed(DHCPMessageType.REQUEST, MAC_A, b"olt1 biz/1/3:100", requested=str(biz.yiaddr),
                  server_id=str(SERVER))
    assert ack.message_type is DHCPMessageType.ACK
    renewal = lab.send(message(DHCPMessageType.REQUEST, MAC_A, ciaddr=str(biz.yiaddr)), local=SERVER,
                       destination=SERVER)
    assert renewal.reply is not None and renewal.reply.packet.message_type is DHCPMessageType.ACK
    assert renewal.reply.packet.option(66) == b"tftp.biz.example"
    home = relayed(DHCPMessageType.DISCOVER, MAC_B, b"olt1 home/1/4:100")
    assert IPv4Address("198.18.1.100") <= home.yiaddr <= IPv4Address("198.18.1.149") and home.option(66) is None
    assert [r.name for r in lab.engine.class_rules if r.matches(None, MAC_B, None, "0x00aa")] == ["by-remote"]
    assert not [r.name for r in lab.engine.class_rules if r.matches(None, MAC_PLAIN, None, "0x00aa")]


def test_a_line_prefix_is_matched_on_the_id_s_bytes_whichever_way_either_is_written() -> None:
    """The canonical text of a whole circuit-id turns to 0x and hex at one unprintable byte (a
    relay that ends it with a NUL), so prefixes are compared as bytes: a text prefix still
    matches such an id, a hex prefix matches a printable one, and hex may be in capitals."""
    cfg = DHCPConfig.model_validate({
        "enabled": True, "interfaces": ["eth1"],
        "subnet": [{"network": "198.18.1.0/24", "interface": "eth1",
                    "pool": [{"name": "p", "range": "198.18.1.100 - 198.18.1.149"}]}],
        "client_class": [{"name": "by-text", "circuit_id": ["olt1 biz/"],
                          "option": [{"code": 66, "text": "tftp.biz.example", "always_send": True}]},
                         {"name": "by-hex", "circuit_id": ["0x6F6C7431"]},
                         {"name": "binary", "remote_id": ["0x00aa"]}],
    })
    lab = Lab(cfg)

    def members(circuit: str | None, remote: str | None = None) -> list[str]:
        return [r.name for r in lab.engine.class_rules if r.matches(None, MAC_PLAIN, circuit, remote)]

    assert members("0x6f6c74312062697a2f312f3300") == ["by-text", "by-hex"]  # b"olt1 biz/1/3\0"
    assert members("olt1 biz/1/3") == ["by-text", "by-hex"]
    assert members("olt2 biz/1/3", "0x00aa01") == ["binary"]
    assert members("0x0a") == [] and members(None, "0xaa00") == []
    # Option 82 that no relay forwarded (giaddr 0) is the client's own claim: no class by it.
    forged = bytes((1, 12)) + b"olt1 biz/1/3"
    direct = lab.send(message(DHCPMessageType.DISCOVER, MAC_PLAIN, extra=((Option.RELAY_AGENT_INFO, forged),)))
    assert direct.reply is not None and direct.untrusted_option82 and direct.reply.packet.option(66) is None
    relayed = lab.send(message(DHCPMessageType.DISCOVER, MAC_PLAIN, giaddr="198.18.1.1",
                               extra=((Option.RELAY_AGENT_INFO, forged),)))
    assert relayed.reply is not None and relayed.reply.packet.option(66) == b"tftp.biz.example"
    for bad in ("0x0", "0xzz", "0x", "olt\u00e9"):
        with pytest.raises(ValidationError, match="circuit_id"):
            DHCPConfig.model_validate({"enabled": True, "client_class": [{"name": "x", "circuit_id": [bad]}]})


def test_ipxe_is_told_apart_from_the_pxe_rom_that_loaded_it_by_its_user_class() -> None:
    """Chainloading: the NIC's PXE ROM gets the iPXE loader, and iPXE, which asks again with the
    same vendor class ("PXEClient:Arch:...") and user class "iPXE" (option 77), must get its
    script, not the loader again: with no way to tell the two apart it booted the loader in a
    loop (Kea tests option 77, dnsmasq's dhcp-userclass). An RFC 3004 list matches by each of
    its classes."""
    cfg = DHCPConfig.model_validate({
        "enabled": True, "interfaces": ["eth1"],
        "subnet": [{"network": "198.18.0.0/24", "interface": "eth1", "routers": ["198.18.0.1"],
                    "pool": [{"name": "p", "range": "198.18.0.100 - 198.18.0.149"}]}],
        "client_class": [{"name": "ipxe", "user_class": ["iPXE"],
                          "option": [{"code": 67, "text": "http://boot.lab.example/boot.ipxe"}]},
                         {"name": "pxe", "vendor_class": ["PXEClient"],
                          "option": [{"code": 67, "text": "undionly.kpxe"}]}],
    })
    lab = Lab(cfg)
    vendor = (Option.VENDOR_CLASS_ID, b"PXEClient:Arch:00000:UNDI:002001")
    asks = (Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 67)))

    def bootfile(*extra: tuple[int, bytes]) -> bytes | None:
        reply = lab.send(message(DHCPMessageType.DISCOVER, MAC_A, extra=(vendor, asks, *extra))).reply
        assert reply is not None
        return reply.packet.option(67)

    assert bootfile() == b"undionly.kpxe"
    assert bootfile((Option.USER_CLASS, b"iPXE")) == b"http://boot.lab.example/boot.ipxe"
    assert bootfile((Option.USER_CLASS, b"\x03abc\x04iPXE")) == b"http://boot.lab.example/boot.ipxe"
    assert bootfile((Option.USER_CLASS, b"gPXE")) == b"undionly.kpxe"
    assert bootfile((Option.USER_CLASS, b"\x00")) == b"undionly.kpxe"
