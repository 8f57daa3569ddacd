from __future__ import annotations

from ispd.mail.imap import mime
from ispd.mail.imap.session import _envelope

MULTIPART = (
    b"From: a@x.example\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="OUTER"\r\n\r\n'
    b"preamble\r\n"
    b"--OUTER\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n"
    b'--OUTER\r\nContent-Type: multipart/alternative; boundary="INNER"\r\n\r\n'
    b"--INNER\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
    b"--INNER\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n"
    b"--INNER--\r\n"
    b"--OUTER\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="a.pdf"\r\n\r\nJVBERi0=\r\n'
    b"--OUTER\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: b@y.example\r\n\r\ninner body\r\n"
    b"--OUTER--\r\nepilogue\r\n"
)


def test_parts_are_the_exact_octets_between_the_boundaries() -> None:
    root = mime.parse(MULTIPART)
    assert [c.maintype for c in root.children] == ["text", "multipart", "application", "message"]
    assert mime.find(root, (1,)).body == b"hello\r\nworld"  # type: ignore[union-attr]
    assert mime.find(root, (2, 2)).body == b"<b>html</b>"  # type: ignore[union-attr]
    assert mime.find(root, (3,)).header.startswith(b"Content-Type: application/pdf")  # type: ignore[union-attr]
    embedded = mime.find(root, (4,))
    assert embedded is not None and embedded.message is not None
    assert embedded.message.header == b"Subject: inner\r\nFrom: b@y.example\r\n\r\n"
    assert mime.find(root, (4, 1)).body == b"inner body"  # type: ignore[union-attr]
    assert mime.find(root, (9,)) is None


def test_a_single_part_message_is_its_own_part_one() -> None:
    root = mime.parse(b"Subject: s\r\n\r\njust text\r\n")
    assert mime.find(root, (1,)) is root
    assert mime.find(root, (2,)) is None


def test_bodystructure_describes_every_part() -> None:
    described = mime.structure(mime.parse(MULTIPART), _envelope, extensible=True)
    assert described.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 12 1 NIL NIL NIL NIL)'
                                b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 0 NIL NIL NIL NIL)')
    assert b'"APPLICATION" "PDF" ("NAME" "a.pdf") NIL NIL "BASE64" 8 NIL ("attachment" ("FILENAME" "a.pdf"))' in described
    assert b'"MESSAGE" "RFC822" NIL NIL NIL "7BIT"' in described and b'"inner"' in described
    assert described.endswith(b' "MIXED" ("BOUNDARY" "OUTER") NIL NIL NIL)')
    plain = mime.structure(mime.parse(MULTIPART), _envelope, extensible=False)
    assert plain.endswith(b' "MIXED")') and b'"7BIT" 12 1)(' in plain  # no extension data


def test_broken_and_hostile_structures_do_not_break() -> None:
    nested = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" * 50
    mime.structure(mime.parse(nested), _envelope, extensible=True)
    unterminated = b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n\r\nno end'
    assert mime.find(mime.parse(unterminated), (1,)).body == b"no end"  # type: ignore[union-attr]
    no_boundary = b"Content-Type: multipart/mixed\r\n\r\nwhatever"
    assert mime.structure(mime.parse(no_boundary), _envelope, extensible=False).startswith(b'("TEXT" "PLAIN"')


def test_rfc2231_parameters_are_passed_on_encoded() -> None:
    """filename*= (and continuations) reach the client as RFC 2231 text, not dropped."""
    message = (b"Content-Type: application/octet-stream; name*0*=UTF-8''%E2%82%AC; name*1=\" rates.bin\"\r\n"
               b"Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rates.bin\r\n\r\ndata\r\n")
    described = mime.structure(mime.parse(message), _envelope, extensible=True)
    assert b'("NAME*" "UTF-8\'\'%E2%82%AC%20rates.bin")' in described, described
    assert b'("attachment" ("FILENAME*" "UTF-8\'\'%E2%82%AC%20rates.bin"))' in described, described


def test_the_parts_of_a_digest_are_messages() -> None:
    """RFC 2046 §5.1.5: in a multipart/digest a part without Content-Type is message/rfc822."""
    digest = (b'Content-Type: multipart/digest; boundary="D"\r\n\r\n'
              b"--D\r\n\r\nSubject: first\r\nFrom: a@x.example\r\n\r\nbody one\r\n"
              b"--D\r\nContent-Type: text/plain\r\n\r\nplain after all\r\n--D--\r\n")
    root = mime.parse(digest)
    first, second = root.children
    assert (first.maintype, first.subtype) == ("message", "rfc822") and first.message is not None
    assert first.message.header == b"Subject: first\r\nFrom: a@x.example\r\n\r\n"
    assert (second.maintype, second.subtype) == ("text", "plain")
    assert mime.find(root, (1, 1)).body == b"body one"  # type: ignore[union-attr]


def test_envelope_groups_have_start_and_end_markers() -> None:
    """RFC 3501 §7.4.2: a group is (NIL NIL "name" NIL) ... (NIL NIL NIL NIL); an address
    without a domain must not look like a group's start."""
    envelope = _envelope(b"From: a@x.example\r\nTo: undisclosed-recipients:;\r\n"
                         b'Cc: friends: "B, b" <b@y.example>, c@z.example;, d@w.example\r\nBcc: local-only\r\n\r\n')
    assert b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))' in envelope, envelope
    assert (b'((NIL NIL "friends" NIL)("B, b" NIL "b" "y.example")(NIL NIL "c" "z.example")(NIL NIL NIL NIL)'
            b'(NIL NIL "d" "w.example"))') in envelope, envelope
    assert b'((NIL NIL "local-only" "MISSING_DOMAIN"))' in envelope, envelope


def test_envelope_keeps_repeated_fields_and_colons_in_display_names() -> None:
    """Two To lines are two addresses; a colon inside an encoded display name, or a comma in a
    quoted group name, makes no group of its own (from a review)."""
    envelope = _envelope(b"From: =?UTF-8?Q?ACME:_Support?= <support@acme.example>\r\n"
                         b"To: a@x.example\r\nTo: b@y.example\r\n"
                         b'Cc: "Doe, John": j@d.example;\r\n\r\n')
    from_ = envelope.split(b" ", 2)[2]  # after the date and subject
    assert from_.startswith(b'((') and not from_.startswith(b"((NIL NIL"), envelope  # no group start
    assert b'((NIL NIL "a" "x.example")(NIL NIL "b" "y.example"))' in envelope, envelope
    assert b'((NIL NIL "Doe, John" NIL)(NIL NIL "j" "d.example")(NIL NIL NIL NIL))' in envelope, envelope


def test_raw_utf8_file_names_and_descriptions_are_sent_as_written() -> None:
    """An attachment named in 8-bit UTF-8 (RFC 6532) keeps its name in BODYSTRUCTURE, as
    Dovecot sends it: clients show and save attachments under that name."""
    message = ("Subject: a\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n"
               "--X\r\nContent-Type: application/pdf; name=\"Übersicht.pdf\"\r\nContent-Description: Отчёт\r\n"
               "Content-Disposition: attachment; filename=\"Übersicht.pdf\"\r\n\r\nJVBERi0=\r\n--X--\r\n").encode()
    described = mime.structure(mime.parse(message), _envelope, extensible=True)
    assert described.count("Übersicht.pdf".encode()) == 2 and "Отчёт".encode() in described, described
    assert "\ufffd".encode() not in described


def test_headers_mixing_utf8_and_bytes_that_are_not_are_described_not_failed() -> None:
    """Read as UTF-8 with the invalid bytes kept as surrogates, a field holding both (Ж and
    0xFF) failed inside the email package (UnicodeEncodeError): the invalid bytes are replaced."""
    from ispd.mail.imap.session import _envelope

    message = (b"Subject: \xd0\x96 \xff\r\nFrom: \xd0\x96\xff <a@b.example>\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=\"\xc3\xa9\"\r\n\r\n--\xc3\xa9\r\n"
               b"Content-Type: text/\xd0\x96; charset=\xff\r\nContent-Description: \xd0\x96\xff\r\n\r\nx\r\n--\xc3\xa9--\r\n")
    described = mime.structure(mime.parse(message), _envelope, extensible=True)
    assert "Ж\ufffd".encode() in described
    header, _, _ = message.partition(b"\r\n\r\n")
    assert "Ж \ufffd".encode() in _envelope(header + b"\r\n\r\n")
