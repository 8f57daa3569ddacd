"""The RADIUS dictionary layer: the FreeRADIUS-format parser (every directive, its errors and its
limits), the shipped dictionaries, and their agreement with FreeRADIUS's own tree when installed."""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispd.radius import dictionary as dictionary_module
from ispd.radius.dictionary import (
    BUILTIN_DIRECTORY,
    Attribute,
    DataType,
    Dictionary,
    DictionaryError,
    Encryption,
    Vendor,
    builtin_dictionary,
    load_dictionary,
    parse_dictionary_files,
)

FREERADIUS_ROOT = Path("/usr/share/freeradius/dictionary")
needs_freeradius = pytest.mark.skipif(not FREERADIUS_ROOT.is_file(), reason="freeradius-common is not installed")


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def parse(tmp_path: Path, text: str, base: Dictionary | None = None, files: dict[str, str] | None = None) -> Dictionary:
    """Parse `text` as tmp_path/dictionary; `files` are more files beside it (for $INCLUDE)."""
    for name, body in (files or {}).items():
        write(tmp_path, name, body)
    return parse_dictionary_files([write(tmp_path, "dictionary", text)], base=base)


def error_of(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> DictionaryError:
    with pytest.raises(DictionaryError) as caught:
        parse(tmp_path, text, files=files)
    return caught.value


STANDARD = """
    ATTRIBUTE	User-Name		1	string
    ATTRIBUTE	Service-Type		6	integer
    ATTRIBUTE	Vendor-Specific		26	vsa
    ATTRIBUTE	Extended-Attribute-1	241	extended
    ATTRIBUTE	Extended-Attribute-5	245	long-extended
    ATTRIBUTE	Extended-Vendor-Specific-5	245.26	evs
"""


# --- ATTRIBUTE -------------------------------------------------------------------------------------------

def test_attribute_numbers_types_and_flags(tmp_path: Path) -> None:
    d = parse(tmp_path, """
        # a comment, then a blank line

        ATTRIBUTE	User-Name		1	string
        ATTRIBUTE	User-Password		0x02	string	encrypt=1   # trailing comment
        ATTRIBUTE	Framed-IP-Address	8	ipaddr
        ATTRIBUTE	Tunnel-Password		69	string	has_tag,encrypt=2
        ATTRIBUTE	Tunnel-Type		64	integer	has_tag=1
        ATTRIBUTE	Ascend-Send-Secret	214	string	encrypt=3
        ATTRIBUTE	EAP-Message		79	octets	concat
        ATTRIBUTE	DNS-Servers		200	ipaddr	array
        ATTRIBUTE	Secret-Thing		201	String	secret
        ATTRIBUTE	MS-CHAP-Response	202	octets[50]
        ATTRIBUTE	Small			203	uint8
        ATTRIBUTE	Medium			204	UINT16
        ATTRIBUTE	Large			205	uint32
        ATTRIBUTE	Huge			206	uint64
        ATTRIBUTE	Prefix			207	cidr
        ATTRIBUTE	Server-Internal		1000	integer	virtual
        ATTRIBUTE	Leading-Zeros		0099	integer
    """)
    assert d.attribute("User-Name") == Attribute("User-Name", (1,), DataType.STRING)
    password = d.attribute("user-password")  # names are case-insensitive
    assert (password.oid, password.encrypt, password.secret) == ((2,), Encryption.USER_PASSWORD, True)
    tunnel = d.attribute("Tunnel-Password")
    assert (tunnel.has_tag, tunnel.encrypt) == (True, Encryption.TUNNEL_PASSWORD)
    assert d.attribute("Tunnel-Type").has_tag
    assert d.attribute("Ascend-Send-Secret").encrypt == Encryption.ASCEND_SECRET
    assert d.attribute("EAP-Message").concat
    assert d.attribute("DNS-Servers").array
    secret = d.attribute("Secret-Thing")
    assert (secret.type, secret.secret, secret.encrypt) == (DataType.STRING, True, Encryption.NONE)
    assert (d.attribute("MS-CHAP-Response").type, d.attribute("MS-CHAP-Response").length) == (DataType.OCTETS, 50)
    assert [d.attribute(n).type for n in ("Small", "Medium", "Large", "Huge", "Prefix")] == [
        DataType.BYTE, DataType.SHORT, DataType.INTEGER, DataType.INTEGER64, DataType.IPV4PREFIX]
    assert d.attribute("Server-Internal").virtual
    assert d.attribute("Leading-Zeros").oid == (99,)  # decimal, not octal
    assert d.by_code(8) is d.attribute("Framed-IP-Address")
    assert d.by_code(8, vendor=9) is None
    assert len(d) == 17
    assert [a.name for a in d][:3] == ["User-Name", "User-Password", "Framed-IP-Address"]
    assert "USER-NAME" in d and "Nope" not in d and 1 not in d
    assert d.where("User-Password") == f"{tmp_path / 'dictionary'}:5"


def test_attribute_objects_are_frozen_hashable_and_their_values_read_only() -> None:
    attribute = Attribute("Service-Type", (6,), DataType.INTEGER, values={"Login-User": 1, "Framed-User": 2})
    assert attribute.code == 6
    assert hash(attribute) == hash(Attribute("Service-Type", (6,), DataType.INTEGER, values={"Other": 9}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        attribute.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        attribute.values["Callback-Login-User"] = 3  # type: ignore[index]
    source = {"A": 1}
    copied = Attribute("X", (200,), DataType.INTEGER, values=source)
    source["B"] = 2
    assert dict(copied.values) == {"A": 1}


def test_dictionaries_and_errors_survive_pickling() -> None:
    # Worker processes get their copies by pickling.
    d = pickle.loads(pickle.dumps(builtin_dictionary()))
    assert list(d) == list(builtin_dictionary())
    assert d.attribute("Service-Type").value_name(2) == "Framed-User"
    assert d.by_code(8, 14988) == builtin_dictionary().attribute("Mikrotik-Rate-Limit")
    error = pickle.loads(pickle.dumps(DictionaryError("dictionary.acme:12", "bad")))
    assert (str(error), error.where, error.message) == ("dictionary.acme:12: bad", "dictionary.acme:12", "bad")


def test_old_style_vendor_in_the_fourth_field(tmp_path: Path) -> None:
    d = parse(tmp_path, """
        VENDOR		Cisco		9
        ATTRIBUTE	Cisco-AVPair	1	string	Cisco
    """)
    avpair = d.attribute("Cisco-AVPair")
    assert (avpair.vendor, avpair.oid) == (9, (1,))
    assert d.by_code(1, 9) is avpair and d.by_code(1) is None


def test_dotted_numbers_tlvs_and_the_26_vendor_form(tmp_path: Path) -> None:
    d = parse(tmp_path, STANDARD + """
        ATTRIBUTE	Frag-Status		241.1	integer
        ATTRIBUTE	Some-TLV		241.5	tlv
        ATTRIBUTE	Some-TLV-Child		241.5.3	ipaddr
        VENDOR		Cisco			9
        ATTRIBUTE	Cisco-NAS-Port		26.9.2	string
        ATTRIBUTE	Outer			99	tlv
        BEGIN-TLV	Outer
        ATTRIBUTE	Inner			1	tlv
        BEGIN-TLV	Inner
        ATTRIBUTE	Innermost		7	octets
        END-TLV		Inner
        ATTRIBUTE	Sibling			2	string
        END-TLV		Outer
    """)
    assert d.attribute("Frag-Status").oid == (241, 1)
    assert d.by_oid((241, 5, 3)) is d.attribute("Some-TLV-Child")
    port = d.attribute("Cisco-NAS-Port")
    assert (port.vendor, port.oid) == (9, (2,))
    assert d.attribute("Innermost").oid == (99, 1, 7)
    assert d.attribute("Sibling").oid == (99, 2)
    assert d.by_code(241) is d.attribute("Extended-Attribute-1")
    assert d.by_code(1) is d.attribute("User-Name")


def test_vendor_blocks_formats_and_vendor_tlvs(tmp_path: Path) -> None:
    d = parse(tmp_path, STANDARD + """
        VENDOR		USR		429	format=4,0
        VENDOR		Lucent		4846	format=2,1
        VENDOR		WiMAX		24757	format=1,1,c
        VENDOR		FreeRADIUS	11344

        BEGIN-VENDOR	USR
        ATTRIBUTE	USR-Last-Number-Dialed-Out	0x0066	string
        ATTRIBUTE	USR-Big			0x9800	integer
        END-VENDOR	USR

        BEGIN-VENDOR	Lucent
        ATTRIBUTE	Lucent-Max-Shared-Users	2	integer
        ATTRIBUTE	Lucent-Wide		65535	integer
        END-VENDOR	Lucent

        BEGIN-VENDOR	WiMAX
        ATTRIBUTE	WiMAX-Capability	1	tlv
        ATTRIBUTE	WiMAX-Release		1.1	string
        ATTRIBUTE	WiMAX-Accounting-Capabilities	1.2	byte
        END-VENDOR	WiMAX

        BEGIN-VENDOR	FreeRADIUS	format=Extended-Vendor-Specific-5
        ATTRIBUTE	FreeRADIUS-Anonce	1	octets
        END-VENDOR	FreeRADIUS
    """)
    assert d.vendor(429) == Vendor(429, "USR", type_size=4, length_size=0)
    assert d.vendor("lucent") == Vendor(4846, "Lucent", type_size=2, length_size=1)
    assert d.vendor("WiMAX") == Vendor(24757, "WiMAX", continuation=True)
    assert d.vendor(12345) is None and d.vendor("Nobody") is None
    assert {v.id for v in d.vendors()} == {429, 4846, 24757, 11344}
    assert d.by_code(0x9800, 429) is d.attribute("USR-Big")
    assert d.by_code(65535, 4846) is d.attribute("Lucent-Wide")
    release = d.attribute("WiMAX-Release")
    assert (release.vendor, release.oid) == (24757, (1, 1))
    assert d.by_oid((1, 2), 24757) is d.attribute("WiMAX-Accounting-Capabilities")
    anonce = d.attribute("FreeRADIUS-Anonce")
    assert (anonce.vendor, anonce.oid) == (11344, (245, 26, 1))
    assert d.by_oid((245, 26, 1), 11344) is anonce


# --- VALUE ----------------------------------------------------------------------------------------------

def test_values_decimal_hex_order_and_lookups(tmp_path: Path) -> None:
    d = parse(tmp_path, """
        ATTRIBUTE	Acct-Status-Type	40	integer
        ATTRIBUTE	Octet			200	byte
        ATTRIBUTE	Wide			201	integer64
        ATTRIBUTE	Negative		202	signed
        VALUE	Acct-Status-Type	Start			1
        VALUE	Acct-Status-Type	Stop			0x02
        VALUE	Acct-Status-Type	Interim-Update		3
        VALUE	Acct-Status-Type	Alive			3
        VALUE	Acct-Status-Type	Start			1
        VALUE	Octet			Max			255
        VALUE	Wide			Big			0xFFFFFFFFFFFFFFFF
        VALUE	Negative		Minus-One		-1
    """)
    status = d.attribute("Acct-Status-Type")
    assert list(status.values.items()) == [("Start", 1), ("Stop", 2), ("Interim-Update", 3), ("Alive", 3)]
    assert status.value_name(3) == "Interim-Update"  # the first name given to a number
    assert status.value_name(99) is None
    assert status.value_number("interim-update") == 3
    assert status.value_number("ALIVE") == 3
    assert status.value_number("Nothing") is None
    assert d.attribute("Octet").value_number("Max") == 255
    assert d.attribute("Wide").value_number("Big") == 2**64 - 1
    assert d.attribute("Negative").value_name(-1) == "Minus-One"


def test_values_before_their_attribute_and_around_vendor_blocks(tmp_path: Path) -> None:
    d = parse(tmp_path, """
        # Like FreeRADIUS's dictionary.compat: a VALUE for an attribute defined later, elsewhere.
        VALUE	Service-Type		Shell-User		6
        $INCLUDE dictionary.rfc
        VENDOR		Acme		99999
        VALUE	Acme-Mode		Early			9
        BEGIN-VENDOR	Acme
        ATTRIBUTE	Acme-Mode		1	integer
        VALUE	Acme-Mode		Inside			1
        VALUE	Service-Type		Acme-Special		200
        END-VENDOR	Acme
        VALUE	Acme-Mode		After			2
    """, files={"dictionary.rfc": """
        ATTRIBUTE	Service-Type		6	integer
        VALUE	Service-Type		Administrative-User	6
    """})
    service = d.attribute("Service-Type")
    # The deferred VALUE comes after the direct ones, so the RFC name prints.
    assert list(service.values.items()) == [("Administrative-User", 6), ("Acme-Special", 200), ("Shell-User", 6)]
    assert service.value_name(6) == "Administrative-User"
    assert service.value_number("shell-user") == 6
    assert dict(d.attribute("Acme-Mode").values) == {"Inside": 1, "After": 2, "Early": 9}


def test_values_in_a_later_file_for_an_attribute_of_an_earlier_one(tmp_path: Path) -> None:
    first = write(tmp_path, "first", "ATTRIBUTE	Service-Type	6	integer\n")
    second = write(tmp_path, "second", "VALUE	Service-Type	Login-User	1\n")
    d = parse_dictionary_files([first, second])
    assert d.attribute("Service-Type").value_number("Login-User") == 1


def test_values_belong_to_the_name_they_were_given_for(tmp_path: Path) -> None:
    # Old and new names for one number keep their own VALUEs: FreeRADIUS's numbering by attribute
    # number would hang an old vendor's VALUEs on whatever attribute later takes the number.
    d = parse(tmp_path, """
        ATTRIBUTE	X-Ascend-Call-Type	177	integer
        VALUE	X-Ascend-Call-Type	Nailed			1
        ATTRIBUTE	Mobility-Domain-Id	177	integer
    """)
    assert d.by_code(177) is d.attribute("Mobility-Domain-Id")
    assert d.attribute("Mobility-Domain-Id").values == {}
    assert d.attribute("X-Ascend-Call-Type").value_number("Nailed") == 1


# --- redefinitions --------------------------------------------------------------------------------------

def test_redefinitions(tmp_path: Path) -> None:
    d = parse(tmp_path, """
        ATTRIBUTE	Client-Id		4	ipaddr
        ATTRIBUTE	NAS-IP-Address		4	ipaddr
        ATTRIBUTE	User-Name		1	string
        ATTRIBUTE	user-name		1	string
        ATTRIBUTE	Class			25	octets
        ATTRIBUTE	Class			25	octets	concat
        VALUE	Class			Ignored			1
        VENDOR		Cisco		9
        VENDOR		Cisco		9
        VENDOR		Cisco-Old	9
    """)
    # Several names for a number: each resolves, and the latest names it when decoding.
    assert d.attribute("Client-Id").oid == d.attribute("NAS-IP-Address").oid == (4,)
    assert d.by_code(4) is d.attribute("NAS-IP-Address")
    assert d.by_code(1) is d.attribute("USER-NAME")
    assert d.attribute("Class").concat  # same name, number and type: the later flags win
    assert d.vendor("Cisco-Old") == Vendor(9, "Cisco-Old")
    assert d.vendor("Cisco") is not None and d.vendor(9) == Vendor(9, "Cisco-Old")


def test_conflicting_redefinitions_name_both_places(tmp_path: Path) -> None:
    first = write(tmp_path, "first", "ATTRIBUTE	Framed-Pool	88	string\n")
    second = write(tmp_path, "second", "\n\nATTRIBUTE	framed-pool	89	string\n")
    with pytest.raises(DictionaryError) as caught:
        parse_dictionary_files([first, second])
    assert str(caught.value) == (f"{second}:3: framed-pool is already attribute 88 (string) (at {first}:1); "
                                 "here it would be attribute 89 (string)")
    assert caught.value.where == f"{second}:3"

    third = write(tmp_path, "third", "ATTRIBUTE	Framed-Pool	88	octets\n")
    with pytest.raises(DictionaryError, match=r"third:1: Framed-Pool is already attribute 88 \(string\)"):
        parse_dictionary_files([first, third])


def test_loading_on_top_of_a_base_leaves_the_base_alone(tmp_path: Path) -> None:
    base = parse(tmp_path, """
        ATTRIBUTE	Service-Type		6	integer
        VALUE	Service-Type		Login-User		1
    """)
    extra = write(tmp_path, "extra", """
        ATTRIBUTE	Acme-Thing		200	string
        VALUE	Service-Type		Acme-User		99
    """)
    layered = parse_dictionary_files([extra], base=base)
    assert layered.attribute("Service-Type").value_number("Acme-User") == 99
    assert layered.attribute("Service-Type").value_number("Login-User") == 1
    assert base.get("Acme-Thing") is None
    assert base.attribute("Service-Type").value_number("Acme-User") is None
    conflicting = write(tmp_path, "conflicting", "ATTRIBUTE	Service-Type	7	integer\n")
    with pytest.raises(DictionaryError, match=r"dictionary:2\)"):
        parse_dictionary_files([conflicting], base=base)


# --- $INCLUDE ----------------------------------------------------------------------------------------------

def test_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, "dictionary.inner", "ATTRIBUTE	Inner	200	string\n")
    write(sub, "dictionary.middle", "$INCLUDE dictionary.inner\nATTRIBUTE	Middle	201	string\n")
    d = parse(tmp_path, f"""
        $INCLUDE sub/dictionary.middle
        $INCLUDE- sub/dictionary.absent
        $INCLUDE {sub / 'dictionary.inner'}
    """)
    assert {a.name for a in d} == {"Inner", "Middle"}


def test_a_file_included_twice_is_fine_but_a_loop_is_not(tmp_path: Path) -> None:
    d = parse(tmp_path, "$INCLUDE dictionary.a\n$INCLUDE dictionary.a\n",
              files={"dictionary.a": "ATTRIBUTE	A	200	integer\nVALUE	A	X	1\n"})
    assert d.attribute("A").value_number("X") == 1

    error = error_of(tmp_path, "$INCLUDE dictionary.b\n", files={"dictionary.b": "\n$INCLUDE dictionary.c\n",
                                                               "dictionary.c": "$INCLUDE dictionary.b\n"})
    assert str(error) == f"{tmp_path / 'dictionary.c'}:1: $INCLUDE loop: dictionary.b -> dictionary.c -> dictionary.b"
    error = error_of(tmp_path, "$INCLUDE dictionary\n")
    assert str(error).endswith("dictionary:1: $INCLUDE loop: dictionary -> dictionary")


def test_include_limits_and_missing_files(tmp_path: Path) -> None:
    for depth in range(30):
        write(tmp_path, f"chain{depth}", f"$INCLUDE chain{depth + 1}\n")
    write(tmp_path, "chain30", "")
    with pytest.raises(DictionaryError, match=r"nested more than 16 deep"):
        parse_dictionary_files([tmp_path / "chain0"])

    error = error_of(tmp_path, "\n$INCLUDE dictionary.missing\n")
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/dictionary:2: cannot read {re.escape(str(tmp_path))}"
                        r"/dictionary.missing: No such file or directory", str(error))
    with pytest.raises(DictionaryError) as caught:
        parse_dictionary_files([tmp_path / "nowhere"])
    assert str(caught.value) == f"{tmp_path / 'nowhere'}: cannot read: No such file or directory"
    assert "not a regular file" in str(error_of(tmp_path, "$INCLUDE .\n"))
    assert "not a regular file" in str(error_of(tmp_path, "$INCLUDE- /dev/null\n"))


def test_size_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "line longer than 4096 characters" in str(error_of(tmp_path, "# " + "x" * 5000 + "\n"))
    monkeypatch.setattr(dictionary_module, "MAX_FILE_BYTES", 100)
    assert "is larger than 100 bytes" in str(error_of(tmp_path, "#" * 200))
    monkeypatch.setattr(dictionary_module, "MAX_FILES", 3)
    error = error_of(tmp_path, "$INCLUDE- a\n$INCLUDE- a\n$INCLUDE- a\n")
    assert str(error).endswith("dictionary:3: more than 3 dictionary files")


# --- FreeRADIUS 4 directives and other protocols -----------------------------------------------------------

def test_protocols_flags_and_aliases(tmp_path: Path) -> None:
    d = parse(tmp_path, """
        PROTOCOL	RADIUS		1
        PROTOCOL	DHCPv4		2
        FLAGS		internal
        BEGIN-PROTOCOL	RADIUS
        ATTRIBUTE	User-Name	1	string
        VENDOR		Cisco		9
        BEGIN-VENDOR	Cisco
        ATTRIBUTE	Cisco-AVPair	1	string
        ALIAS		Cisco-AV-Pair	1
        END-VENDOR	Cisco
        END-PROTOCOL	RADIUS
        BEGIN-PROTOCOL	DHCPv4
        ATTRIBUTE	Subnet-Mask	1	ipaddr
        ATTRIBUTE	Anything	what	ever
        END-PROTOCOL	DHCPv4
        ALIAS		Login-Name	User-Name
        ALIAS		Login-Name	user-name
        ALIAS		Cisco-Thing	Vendor-Specific.Cisco.AVPair
    """)
    assert d.attribute("User-Name").oid == (1,)
    assert d.get("Subnet-Mask") is None and d.get("Anything") is None
    assert d.attribute("login-name") is d.attribute("User-Name")
    assert d.attribute("Cisco-AV-Pair") is d.attribute("Cisco-AVPair")
    assert [s.text for s in d.skipped] == [
        "PROTOCOL RADIUS 1", "PROTOCOL DHCPv4 2", "FLAGS internal", "BEGIN-PROTOCOL DHCPv4",
        "ALIAS Cisco-Thing Vendor-Specific.Cisco.AVPair"]
    assert d.skipped[0].where == f"{tmp_path / 'dictionary'}:2"
    assert len(d) == 2  # aliases are names, not attributes


def test_lookup_errors_suggest_names() -> None:
    d = builtin_dictionary()
    with pytest.raises(KeyError, match=r"no RADIUS attribute named 'User-Nme'.*did you mean 'User-Name'"):
        d.attribute("User-Nme")
    with pytest.raises(KeyError) as caught:
        d.attribute("Zzzzzz")
    assert caught.value.args == ("no RADIUS attribute named 'Zzzzzz' in the dictionary",)
    assert d.get("User-Nme") is None


# --- malformed input: every message names FILE:LINE ------------------------------------------------------

MALFORMED = [
    ("ATTRIBUTE	User-Name	1", "ATTRIBUTE needs a name, a number and a type, and may have flags"),
    ("ATTRIBUTE	A	1	string	has_tag	extra", "ATTRIBUTE needs a name, a number and a type"),
    ("ATTRIBUTE	Bad!Name	1	string", "bad attribute name 'Bad!Name'"),
    ("ATTRIBUTE	" + "N" * 129 + "	1	string", "bad attribute name"),
    ("ATTRIBUTE	A	one	string", "attribute number 'one' is not a decimal or 0x hex number"),
    ("ATTRIBUTE	A	0x	string", "attribute number '0x' is not a decimal"),
    ("ATTRIBUTE	A	-1	string", "attribute number '-1' is not a decimal"),
    ("ATTRIBUTE	A	0	string", "attribute number 0 is outside 1..65535"),
    ("ATTRIBUTE	A	65536	string", "attribute number 65536 is outside 1..65535"),
    ("ATTRIBUTE	A	1..2	string", "attribute number '' is not a decimal"),
    ("ATTRIBUTE	A	1	text", "unknown type 'text'"),
    ("ATTRIBUTE	A	1	octets[0]", "fixed length 0 is outside 1..253"),
    ("ATTRIBUTE	A	1	octets[254]", "fixed length 254 is outside 1..253"),
    ("ATTRIBUTE	A	1	string	encrypt=4", "encrypt=4: encrypt is 0, 1, 2 or 3"),
    ("ATTRIBUTE	A	1	string	encrypt=x", "encrypt=x: encrypt is 0, 1, 2 or 3"),
    ("ATTRIBUTE	A	1	octets	encrypt=3", "encrypt=3 is only for string attributes"),
    ("ATTRIBUTE	A	1	ipaddr	has_tag", "has_tag: only integer, string and octets attributes have tags"),
    ("ATTRIBUTE	A	1	string	concat", "concat is only for octets attributes"),
    ("ATTRIBUTE	A	1	tlv	array", "array: tlv attributes cannot be arrays"),
    ("ATTRIBUTE	A	1	string	virtual", "virtual is only for server-internal attributes"),
    ("ATTRIBUTE	A	1	string	has_tag,bogus", "unknown flag 'bogus'"),
    ("ATTRIBUTE	A	1	string	Nobody", "unknown flag or vendor 'Nobody'"),
    ("ATTRIBUTE	A	26	octets", "A: attribute 26 is Vendor-Specific, its type must be vsa"),
    ("ATTRIBUTE	A	27	vsa", "A: only attribute 26 can be of type vsa"),
    ("ATTRIBUTE	A	240	extended", "A: only attributes 241..246 can be of type extended"),
    ("ATTRIBUTE	A	7.1	string", "A: its parent attribute 7 is not defined (yet)"),
    ("VENDOR	Acme	5\nATTRIBUTE	A	26.5.1.1	string", "A: its parent vendor 5 attribute 1 is not defined (yet)"),
    ("ATTRIBUTE	A	1.1	string", "A: its parent User-Name is string; only tlv, extended and long-extended"),
    ("ATTRIBUTE	A	241.0	string", "child number under Extended-Attribute-1 0 is outside 1..255"),
    ("ATTRIBUTE	A	241.26	string", "A: type evs belongs exactly to 241.26 .. 246.26"),
    ("ATTRIBUTE	A	26.9	string", "26.9: 26.VENDOR needs an attribute number after the vendor"),
    ("ATTRIBUTE	A	26.77.1	string", "26.77.1: vendor 77 is not defined (VENDOR first)"),
    ("ATTRIBUTE	A	1.2.3.4.5.6.7.8.9.10.11.12	string", "attribute number '1.2.3.4.5.6.7.8.9.10.11.12' has too many"),
    ("ATTRIBUTE	User-Name	2	string", "User-Name is already attribute 1 (string)"),
    ("VALUE	Service-Type	Login-User", "VALUE needs an attribute name, a value name and a number"),
    ("VALUE	Service-Type	Login-User	one", "VALUE Login-User: 'one' is not a decimal or 0x hex number"),
    ("VALUE	Service-Type	Login-User	0x1FFFFFFFF", "VALUE Login-User: 8589934591 does not fit Service-Type (integer)"),
    ("VALUE	Service-Type	Login-User	-1", "VALUE Login-User: -1 does not fit Service-Type (integer)"),
    ("VALUE	Service-Type	Known	2", "VALUE Service-Type Known is already 1 (at "),
    ("VALUE	User-Name	Someone	1", "VALUE Someone: User-Name is string, which has no VALUEs"),
    ("VALUE	Nobody	Someone	1", "VALUE Someone: no ATTRIBUTE Nobody is defined"),
    ("VALUE	Bad!Attr	Someone	1", "bad attribute name 'Bad!Attr'"),
    ("VALUE	Service-Type	Caf\u00e9	1", "bad VALUE name 'Caf\u00e9'"),
    ("VENDOR	Acme", "VENDOR needs a name and a number"),
    ("VENDOR	Acme	0", "vendor number 0 is outside 1..16777215"),
    ("VENDOR	Acme	16777216", "vendor number 16777216 is outside 1..16777215"),
    ("VENDOR	Acme	5	format=3,1", "bad vendor format 'format=3,1'"),
    ("VENDOR	Acme	5	format=2,1,c", "only format=1,1 vendors can have continuations"),
    ("VENDOR	Cisco	10", "vendor Cisco is already number 9 (at "),
    ("VENDOR	Cisco-Wide	9	format=2,2", "vendor 9 (Cisco) was given another format at "),
    ("BEGIN-VENDOR	Nobody", "unknown vendor 'Nobody' (define it with VENDOR first)"),
    ("BEGIN-VENDOR	Cisco	format=Extended-Vendor-Specific-7", "bad BEGIN-VENDOR option"),
    ("BEGIN-VENDOR	Cisco	format=Extended-Vendor-Specific-1", "no evs attribute 241.26 (Extended-Vendor-Specific-1)"),
    ("BEGIN-VENDOR	Cisco\nBEGIN-VENDOR	Cisco", "BEGIN-VENDOR inside BEGIN-VENDOR Cisco"),
    ("BEGIN-VENDOR	Cisco\nATTRIBUTE	A	256	string", "attribute number for vendor Cisco (format=1,1) 256 is outside 0..255"),
    ("BEGIN-VENDOR	Cisco\nATTRIBUTE	A	1	string	Cisco", "a vendor name after the type is not allowed"),
    ("BEGIN-VENDOR	Cisco\nEND-VENDOR	Other", "END-VENDOR Other does not close BEGIN-VENDOR Cisco (opened at "),
    ("BEGIN-VENDOR	Cisco\nEND-TLV	Cisco", "END-TLV Cisco does not close BEGIN-VENDOR Cisco"),
    ("BEGIN-VENDOR	Cisco\n", "BEGIN-VENDOR Cisco has no matching END-VENDOR"),
    ("END-VENDOR	Cisco", "END-VENDOR Cisco without a BEGIN-VENDOR"),
    ("END-VENDOR", "END-VENDOR needs the name its BEGIN gave"),
    ("BEGIN-TLV	Nothing", "BEGIN-TLV Nothing: no such attribute"),
    ("BEGIN-TLV	User-Name", "BEGIN-TLV User-Name: it is string, not tlv"),
    ("BEGIN-TLV	Group\nATTRIBUTE	A	1.2	string", "inside BEGIN-TLV Group a number is a single child number"),
    ("BEGIN-TLV	Group\nATTRIBUTE	A	0	string", "child number under Group 0 is outside 1..255"),
    ("BEGIN-VENDOR	Cisco\nBEGIN-TLV	Group", "BEGIN-TLV Group: that attribute belongs to another vendor"),
    ("BEGIN-PROTOCOL", "BEGIN-PROTOCOL needs a protocol name"),
    ("BEGIN-PROTOCOL	DHCPv6\n", "BEGIN-PROTOCOL DHCPv6 has no matching END-PROTOCOL"),
    ("$INCLUDE", "$INCLUDE needs exactly one file name"),
    ("$INCLUDE-	a	b", "$INCLUDE- needs exactly one file name"),
    ("ALIAS	Only-One", "ALIAS needs a new name and the attribute it stands for"),
    ("ALIAS	Service-Type	User-Name", "ALIAS Service-Type: that name is already Service-Type"),
    ("ALIAS	Login-Name	User-Name\nATTRIBUTE	Login-Name	2	string", "Login-Name is already an ALIAS"),
    ("STRUCT-ISH	foo", "unknown keyword 'STRUCT-ISH'"),
]

PRELUDE = """ATTRIBUTE	User-Name	1	string
ATTRIBUTE	Service-Type	6	integer
ATTRIBUTE	Vendor-Specific	26	vsa
ATTRIBUTE	Extended-Attribute-1	241	extended
ATTRIBUTE	Group	100	tlv
VALUE	Service-Type	Known	1
VENDOR	Cisco	9
"""


@pytest.mark.parametrize(("line", "message"), MALFORMED, ids=[m[1][:40] for m in MALFORMED])
def test_malformed_lines_give_file_line_and_reason(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "dictionary.acme", PRELUDE + line + "\n")
    with pytest.raises(DictionaryError) as caught:
        parse_dictionary_files([path])
    text = str(caught.value)
    prelude_lines = PRELUDE.count("\n")
    where = re.match(rf"{re.escape(str(path))}:(\d+): ", text)
    assert where, text
    assert int(where[1]) > prelude_lines, text  # the line at fault, not one of the good ones before it
    assert message in text[where.end():], text


def test_the_error_message_format(tmp_path: Path) -> None:
    path = write(tmp_path, "dictionary.acme", "\n" * 11 + "ATTRIBUTE	Acme-Thing	12\n")
    with pytest.raises(DictionaryError) as caught:
        parse_dictionary_files([path])
    assert str(caught.value) == f"{path}:12: ATTRIBUTE needs a name, a number and a type, and may have flags"
    assert isinstance(caught.value, ValueError)
    assert caught.value.message == "ATTRIBUTE needs a name, a number and a type, and may have flags"


# --- the shipped dictionaries -------------------------------------------------------------------------------

def test_the_shipped_set_loads_and_is_cached() -> None:
    d = builtin_dictionary()
    assert d is builtin_dictionary()
    assert load_dictionary() is d
    assert len(d) > 300
    assert d.skipped == ()  # plain FreeRADIUS 3 syntax only, so FreeRADIUS could read them too


def test_every_shipped_file_is_included_and_has_a_header() -> None:
    root = (BUILTIN_DIRECTORY / "dictionary").read_text()
    included = set(re.findall(r"^\$INCLUDE\s+(\S+)", root, re.MULTILINE))
    shipped = {p.name for p in BUILTIN_DIRECTORY.iterdir()} - {"dictionary"}
    assert included == shipped
    for name in shipped | {"dictionary"}:
        text = (BUILTIN_DIRECTORY / name).read_text()
        assert text.startswith("# "), name
        assert "ispd" in text.split("\n\n")[0], f"{name}: the header should say it is written for ispd"


SHIPPED_FACTS: list[tuple[str, int, tuple[int, ...], DataType, dict[str, object]]] = [
    ("User-Name", 0, (1,), DataType.STRING, {}),
    ("User-Password", 0, (2,), DataType.STRING, {"encrypt": Encryption.USER_PASSWORD, "secret": True}),
    ("CHAP-Password", 0, (3,), DataType.OCTETS, {}),
    ("NAS-IP-Address", 0, (4,), DataType.IPADDR, {}),
    ("Service-Type", 0, (6,), DataType.INTEGER, {}),
    ("Framed-IP-Address", 0, (8,), DataType.IPADDR, {}),
    ("Class", 0, (25,), DataType.OCTETS, {}),
    ("Vendor-Specific", 0, (26,), DataType.VSA, {}),
    ("Calling-Station-Id", 0, (31,), DataType.STRING, {}),
    ("Acct-Status-Type", 0, (40,), DataType.INTEGER, {}),
    ("Acct-Input-Gigawords", 0, (52,), DataType.INTEGER, {}),
    ("Event-Timestamp", 0, (55,), DataType.DATE, {}),
    ("NAS-Port-Type", 0, (61,), DataType.INTEGER, {}),
    ("Tunnel-Type", 0, (64,), DataType.INTEGER, {"has_tag": True}),
    ("Tunnel-Password", 0, (69,), DataType.STRING, {"has_tag": True, "encrypt": Encryption.TUNNEL_PASSWORD}),
    ("EAP-Message", 0, (79,), DataType.OCTETS, {"concat": True}),
    ("Message-Authenticator", 0, (80,), DataType.OCTETS, {}),
    ("Tunnel-Private-Group-Id", 0, (81,), DataType.STRING, {"has_tag": True}),
    ("Acct-Interim-Interval", 0, (85,), DataType.INTEGER, {}),
    ("NAS-Port-Id", 0, (87,), DataType.STRING, {}),
    ("Framed-Pool", 0, (88,), DataType.STRING, {}),
    ("Chargeable-User-Identity", 0, (89,), DataType.OCTETS, {}),
    ("Framed-Interface-Id", 0, (96,), DataType.IFID, {}),
    ("Framed-IPv6-Prefix", 0, (97,), DataType.IPV6PREFIX, {}),
    ("Framed-IPv6-Pool", 0, (100,), DataType.STRING, {}),
    ("Error-Cause", 0, (101,), DataType.INTEGER, {}),
    ("Egress-VLANID", 0, (56,), DataType.INTEGER, {}),
    ("Delegated-IPv6-Prefix", 0, (123,), DataType.IPV6PREFIX, {}),
    ("Framed-IPv6-Address", 0, (168,), DataType.IPV6ADDR, {}),
    ("DNS-Server-IPv6-Address", 0, (169,), DataType.IPV6ADDR, {}),
    ("Route-IPv6-Information", 0, (170,), DataType.IPV6PREFIX, {}),
    ("Delegated-IPv6-Prefix-Pool", 0, (171,), DataType.STRING, {}),
    ("Stateful-IPv6-Address-Pool", 0, (172,), DataType.STRING, {}),
    ("Extended-Attribute-1", 0, (241,), DataType.EXTENDED, {}),
    ("Extended-Attribute-5", 0, (245,), DataType.LONG_EXTENDED, {}),
    ("Extended-Vendor-Specific-1", 0, (241, 26), DataType.EVS, {}),
    ("Frag-Status", 0, (241, 1), DataType.INTEGER, {}),
    ("ADSL-Agent-Circuit-Id", 3561, (1,), DataType.OCTETS, {}),
    ("ADSL-Agent-Remote-Id", 3561, (2,), DataType.OCTETS, {}),
    ("Actual-Data-Rate-Upstream", 3561, (129,), DataType.INTEGER, {}),
    ("MS-CHAP-Response", 311, (1,), DataType.OCTETS, {"length": 50}),
    ("MS-CHAP-Challenge", 311, (11,), DataType.OCTETS, {}),
    ("MS-CHAP-MPPE-Keys", 311, (12,), DataType.OCTETS, {"encrypt": Encryption.USER_PASSWORD, "length": 24}),
    ("MS-MPPE-Send-Key", 311, (16,), DataType.OCTETS, {"encrypt": Encryption.TUNNEL_PASSWORD}),
    ("MS-MPPE-Recv-Key", 311, (17,), DataType.OCTETS, {"encrypt": Encryption.TUNNEL_PASSWORD}),
    ("MS-CHAP2-Response", 311, (25,), DataType.OCTETS, {"length": 50}),
    ("MS-CHAP2-Success", 311, (26,), DataType.OCTETS, {}),
    ("MS-Primary-DNS-Server", 311, (28,), DataType.IPADDR, {}),
    ("MS-Secondary-NBNS-Server", 311, (31,), DataType.IPADDR, {}),
    ("Mikrotik-Recv-Limit", 14988, (1,), DataType.INTEGER, {}),
    ("Mikrotik-Group", 14988, (3,), DataType.STRING, {}),
    ("Mikrotik-Rate-Limit", 14988, (8,), DataType.STRING, {}),
    ("Mikrotik-Address-List", 14988, (19,), DataType.STRING, {}),
    ("Mikrotik-Delegated-IPv6-Pool", 14988, (22,), DataType.STRING, {}),
    ("Cisco-AVPair", 9, (1,), DataType.STRING, {}),
    ("Cisco-NAS-Port", 9, (2,), DataType.STRING, {}),
    ("Cisco-Account-Info", 9, (250,), DataType.STRING, {}),
    ("Cisco-Command-Code", 9, (252,), DataType.STRING, {}),
    ("Juniper-Local-User-Name", 2636, (1,), DataType.STRING, {}),
    ("ERX-Virtual-Router-Name", 4874, (1,), DataType.STRING, {}),
    ("ERX-Address-Pool-Name", 4874, (2,), DataType.STRING, {}),
    ("ERX-Primary-Dns", 4874, (4,), DataType.IPADDR, {}),
    ("ERX-Ingress-Policy-Name", 4874, (10,), DataType.STRING, {}),
    ("ERX-Egress-Policy-Name", 4874, (11,), DataType.STRING, {}),
    ("ERX-Service-Activate", 4874, (65,), DataType.STRING, {"has_tag": True}),
    ("ERX-Service-Deactivate", 4874, (66,), DataType.STRING, {}),
    ("ERX-Ipv6-Primary-Dns", 4874, (47,), DataType.IPV6ADDR, {}),
]


@pytest.mark.parametrize(("name", "vendor", "oid", "data_type", "flags"), SHIPPED_FACTS, ids=[f[0] for f in SHIPPED_FACTS])
def test_shipped_key_attributes(name: str, vendor: int, oid: tuple[int, ...], data_type: DataType,
                                flags: dict[str, object]) -> None:
    attribute = builtin_dictionary().attribute(name)
    assert (attribute.vendor, attribute.oid, attribute.type) == (vendor, oid, data_type)
    for flag, value in flags.items():
        assert getattr(attribute, flag) == value, flag
    assert builtin_dictionary().by_oid(oid, vendor) is attribute


def test_shipped_values_and_vendors() -> None:
    d = builtin_dictionary()
    status = d.attribute("Acct-Status-Type")
    assert [status.value_number(n) for n in ("Start", "Stop", "Interim-Update", "Accounting-On", "Accounting-Off")] == [
        1, 2, 3, 7, 8]
    assert status.value_name(3) == "Interim-Update"
    cause = d.attribute("Acct-Terminate-Cause")
    assert [cause.value_name(n) for n in (1, 4, 5, 6, 22)] == [
        "User-Request", "Idle-Timeout", "Session-Timeout", "Admin-Reset", "Port-Disabled"]
    assert d.attribute("Service-Type").value_number("Framed-User") == 2
    assert d.attribute("Service-Type").value_number("Authorize-Only") == 17
    assert d.attribute("Framed-Protocol").value_number("PPP") == 1
    assert d.attribute("NAS-Port-Type").value_number("Ethernet") == 15
    assert d.attribute("Tunnel-Type").value_number("VLAN") == 13
    assert d.attribute("Tunnel-Medium-Type").value_number("IEEE-802") == 6
    assert d.attribute("Error-Cause").value_number("Session-Context-Not-Found") == 503
    assert d.attribute("MS-MPPE-Encryption-Policy").value_number("Encryption-Required") == 2
    assert {v.name: v.id for v in d.vendors()} == {
        "ADSL-Forum": 3561, "Microsoft": 311, "Mikrotik": 14988, "Cisco": 9, "Juniper": 2636, "ERX": 4874}
    assert all((v.type_size, v.length_size, v.continuation) == (1, 1, False) for v in d.vendors())


def test_operator_files_go_on_top_of_the_shipped_set(tmp_path: Path) -> None:
    extra = write(tmp_path, "dictionary.acme", """
        VENDOR		Acme		99999
        BEGIN-VENDOR	Acme
        ATTRIBUTE	Acme-Plan	1	string
        END-VENDOR	Acme
        VALUE	Service-Type	Acme-Portal-User	240
    """)
    d = load_dictionary([extra])
    assert d.attribute("Acme-Plan").vendor == 99999
    assert d.attribute("Service-Type").value_number("Acme-Portal-User") == 240
    assert d.attribute("Service-Type").value_number("Framed-User") == 2
    assert builtin_dictionary().get("Acme-Plan") is None
    bad = write(tmp_path, "dictionary.bad", "ATTRIBUTE	Mikrotik-Rate-Limit	8	string\n")
    with pytest.raises(DictionaryError, match=r"Mikrotik-Rate-Limit is already vendor 14988 attribute 8"):
        load_dictionary([bad])


# --- FreeRADIUS's tree ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def freeradius() -> Dictionary:
    return parse_dictionary_files([FREERADIUS_ROOT])


@needs_freeradius
def test_freeradius_tree_loads_and_agrees_with_known_facts(freeradius: Dictionary) -> None:
    d = freeradius
    assert len(d) > 5000
    assert d.attribute("User-Name") == Attribute("User-Name", (1,), DataType.STRING)
    password = d.attribute("User-Password")
    assert (password.oid, password.type, password.encrypt) == ((2,), DataType.STRING, Encryption.USER_PASSWORD)
    tunnel = d.attribute("Tunnel-Password")
    assert (tunnel.oid, tunnel.has_tag, tunnel.encrypt) == ((69,), True, Encryption.TUNNEL_PASSWORD)
    rate = d.attribute("Mikrotik-Rate-Limit")
    assert (rate.vendor, rate.oid, rate.type) == (14988, (8,), DataType.STRING)
    success = d.attribute("MS-CHAP2-Success")
    assert (success.vendor, success.oid) == (311, (26,))
    assert (d.attribute("Cisco-AVPair").vendor, d.attribute("Cisco-AVPair").oid) == (9, (1,))
    policy = d.attribute("ERX-Ingress-Policy-Name")
    assert (policy.vendor, policy.oid, policy.type) == (4874, (10,), DataType.STRING)
    assert d.attribute("Juniper-Junosspace-Profile").type == DataType.STRING  # spelled "String" there
    assert d.attribute("MS-CHAP-Response").length == 50  # octets[50]
    assert d.vendor("WiMAX") == Vendor(24757, "WiMAX", continuation=True)
    assert d.vendor("USR") == Vendor(429, "USR", type_size=4, length_size=0)
    wimax = d.attribute("WiMAX-Release")
    assert (wimax.vendor, wimax.oid) == (24757, (1, 1))
    evs = d.attribute("FreeRADIUS-802.1X-Anonce")
    assert (evs.vendor, evs.oid) == (11344, (245, 26, 1))
    # dictionary.compat's old names come first, so the RFC names are the ones decoding prints.
    assert d.by_code(4) is d.attribute("NAS-IP-Address")
    assert d.attribute("Service-Type").value_name(6) == "Administrative-User"
    assert d.attribute("Service-Type").value_number("Shell-User") == 6
    assert d.attribute("Acct-Status-Type").value_number("Interim-Update") == 3


# Where FreeRADIUS's tree is demonstrably wrong per the RFC, our files follow the RFC: list those
# names here with the reason. (None so far.)
FREERADIUS_DIFFERS: dict[str, str] = {}

# Names we ship that FreeRADIUS's tree lacks, each with the reason.
NOT_IN_FREERADIUS: dict[str, str] = {
    "Framed-Management-Protocol": "RFC 5607's own name for 133; FreeRADIUS calls it Framed-Management",
}


@needs_freeradius
def test_shipped_set_agrees_with_freeradius(freeradius: Dictionary) -> None:
    ours = builtin_dictionary()
    mismatches: list[str] = []
    for attribute in ours:
        theirs = freeradius.get(attribute.name)
        if theirs is None or attribute.name in FREERADIUS_DIFFERS:
            continue
        for field in ("vendor", "oid", "type", "length", "encrypt", "has_tag", "array", "concat"):
            if getattr(attribute, field) != getattr(theirs, field):
                mismatches.append(f"{attribute.name}: {field} {getattr(attribute, field)!r} here, "
                                  f"{getattr(theirs, field)!r} in FreeRADIUS")
        for value_name, number in attribute.values.items():
            their_number = theirs.value_number(value_name)
            if their_number is not None and their_number != number:
                mismatches.append(f"VALUE {attribute.name} {value_name}: {number} here, {their_number} in FreeRADIUS")
    for vendor in ours.vendors():
        if freeradius.vendor(vendor.name) != vendor:
            mismatches.append(f"vendor {vendor}: FreeRADIUS has {freeradius.vendor(vendor.name)}")
    assert mismatches == []


@needs_freeradius
def test_shipped_names_are_freeradius_names(freeradius: Dictionary) -> None:
    unknown = sorted(a.name for a in builtin_dictionary() if freeradius.get(a.name) is None)
    assert unknown == sorted(NOT_IN_FREERADIUS)


@needs_freeradius
def test_freeradius_tree_loads_on_top_of_the_shipped_set() -> None:
    # What an operator does who names FreeRADIUS's dictionary in the config.
    d = load_dictionary([FREERADIUS_ROOT])
    assert d.attribute("Ascend-Data-Filter").type == DataType.ABINARY
    assert d.attribute("Framed-Management").value_number("Netconf") == 3
    assert d.by_code(8, 14988) is d.attribute("Mikrotik-Rate-Limit")


# --- fuzzing ------------------------------------------------------------------------------------------------

KEYWORDS = ["ATTRIBUTE", "VALUE", "VENDOR", "BEGIN-VENDOR", "END-VENDOR", "BEGIN-TLV", "END-TLV", "$INCLUDE",
            "$INCLUDE-", "ALIAS", "PROTOCOL", "BEGIN-PROTOCOL", "END-PROTOCOL", "FLAGS", "#"]
TOKENS = ["User-Name", "Acme", "Acme-X", "Group", "1", "26", "241", "241.1", "241.26", "26.9.1", "1.2", "0x1a",
          "0", "-1", "99999999999999999999999", "string", "integer", "tlv", "octets[3]", "evs", "vsa", "extended",
          "has_tag", "encrypt=2", "array,concat", "format=2,1", "format=Extended-Vendor-Specific-1", "RADIUS",
          "DHCP", "other", "dictionary", ".", "..", "/dev/null", "a\x00b", "\u00e9", "#"]
random_lines = st.lists(st.one_of(st.sampled_from(KEYWORDS), st.sampled_from(TOKENS), st.text(max_size=8)),
                        max_size=6).map(" ".join)
# Mostly well-formed lines too, so that parsing gets past the first line and into the cross-checks.
attribute_lines = st.tuples(
    st.sampled_from(["A", "B", "Acme-X", "Group", "User-Name", "Service-Type"]),
    st.sampled_from(["1", "2", "7", "26", "100", "241", "241.1", "241.26", "100.1", "100.1.2", "26.9.1", "0x1a",
                     "255", "256", "65536"]),
    st.sampled_from(["string", "integer", "tlv", "octets", "byte", "ipaddr", "evs", "extended", "vsa", "octets[2]"]),
    st.sampled_from(["", "has_tag", "encrypt=2", "array", "concat", "Cisco", "secret"]),
).map(lambda fields: "ATTRIBUTE " + " ".join(fields))
value_lines = st.tuples(
    st.sampled_from(["A", "B", "Acme-X", "Group", "Service-Type", "Later"]),
    st.sampled_from(["X", "Y", "Known"]),
    st.sampled_from(["1", "2", "-1", "0x10", "300", "4294967296"]),
).map(lambda fields: "VALUE " + " ".join(fields))
block_lines = st.sampled_from([
    "BEGIN-VENDOR Cisco", "END-VENDOR Cisco", "BEGIN-TLV Group", "END-TLV Group", "BEGIN-PROTOCOL DHCP",
    "END-PROTOCOL DHCP", "$INCLUDE other", "$INCLUDE- missing", "VENDOR Acme 5 format=2,1", "BEGIN-VENDOR Acme",
    "END-VENDOR Acme", "ALIAS Alias-X Acme-X", "ATTRIBUTE Later 201 integer"])
documents = st.lists(st.one_of(attribute_lines, value_lines, block_lines, attribute_lines, random_lines),
                     max_size=25).map("\n".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(main=documents, other=documents)
def test_random_lines_raise_nothing_but_dictionary_errors(tmp_path: Path, main: str, other: str) -> None:
    (tmp_path / "other").write_text(other, errors="surrogatepass")
    path = tmp_path / "dictionary"
    path.write_text(PRELUDE + "ATTRIBUTE Acme-X 200 integer\n" + main, errors="surrogatepass")
    try:
        d = parse_dictionary_files([path, tmp_path / "other"])
    except DictionaryError as exc:
        assert re.match(r".+?:(\d+: |\s)", str(exc)), str(exc)
    else:
        for attribute in d:
            assert d.get(attribute.name) is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_random_bytes_raise_nothing_but_dictionary_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "dictionary"
    path.write_bytes(PRELUDE.encode() + data)
    with contextlib.suppress(DictionaryError):
        parse_dictionary_files([path])
