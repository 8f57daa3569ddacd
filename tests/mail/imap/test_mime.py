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
