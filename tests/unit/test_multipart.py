"""service.multipart: werkzeug's multipart parsing, the same answers without a regex compiled per request.

`BoundaryPattern.search` is compared with the regular expression werkzeug compiles (on generated
data, hypothesis), and werkzeug's form parser with `BoundaryDecoder` against the same parser with
werkzeug's own decoder, on bodies of every line-break style, split across read chunks.
"""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug import formparser
from werkzeug.sansio.multipart import LINE_BREAK, MultipartDecoder

from service.multipart import BoundaryDecoder, BoundaryPattern

BOUNDARY = b"b0und"


def werkzeug_pattern(boundary: bytes, *, line_break_optional: bool) -> re.Pattern[bytes]:
    prefix = b"%s?" % LINE_BREAK if line_break_optional else LINE_BREAK
    return re.compile(
        rb"%s--%s(--[^\S\n\r]*%s?|[^\S\n\r]*%s)" % (prefix, re.escape(boundary), LINE_BREAK, LINE_BREAK),
        re.MULTILINE,
    )


pieces = st.sampled_from([b"\r\n", b"\n", b"\r", b"--", BOUNDARY, b"--" + BOUNDARY, b" ", b"\t", b"x", b"b0", b"-"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(pieces, max_size=14), st.booleans(), st.integers(0, 6))
def test_search_finds_what_werkzeugs_expression_finds(parts: list[bytes], optional: bool, pos: int) -> None:
    data = b"".join(parts)
    expected = werkzeug_pattern(BOUNDARY, line_break_optional=optional).search(data, pos)
    found = BoundaryPattern(BOUNDARY, line_break_optional=optional).search(bytearray(data), pos)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.start(), found.end(), found.group(1)) == (expected.start(), expected.end(), expected.group(1))


def body(line_break: bytes, boundary: bytes, *, payload: bytes, trailing: bytes = b"", preamble: bytes = b"") -> bytes:
    nl = line_break
    return (
        preamble
        + b"--" + boundary + trailing + nl
        + b'Content-Disposition: form-data; name="signature_name"' + nl + nl
        + b"serving_default" + nl
        + b"--" + boundary + nl
        + b'Content-Disposition: form-data; name="image"; filename="a.png"' + nl
        + b"Content-Type: image/png" + nl + nl
        + payload + nl
        + b"--" + boundary + b"--" + trailing + nl
        + b"epilogue"
    )  # fmt: skip


def parse(data: bytes, boundary: bytes, decoder: type, monkeypatch: pytest.MonkeyPatch, buffer_size: int):
    monkeypatch.setattr(formparser, "MultipartDecoder", decoder)
    parser = formparser.MultiPartParser(buffer_size=buffer_size)
    try:
        fields, files = parser.parse(io.BytesIO(data), boundary, len(data))
    except Exception as err:  # noqa: BLE001 - the two decoders must fail alike
        return type(err).__name__
    return (
        sorted(fields.items(multi=True)),
        sorted((k, f.filename, f.read()) for k, f in files.items(multi=True)),
    )


PAYLOADS = [
    b"\x89PNG plain bytes",
    b"data with --b0und inside but no line break before it",
    b"data ending in a line break\r\n",
    b"\r\n--b0un partial boundary at a chunk edge " * 3000,
    bytes(range(256)) * 700,
]


@pytest.mark.parametrize("line_break", [b"\r\n", b"\n", b"\r"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
@pytest.mark.parametrize("buffer_size", [64 * 1024, 1024, 97])
def test_forms_parse_as_with_werkzeugs_own_decoder(
    line_break: bytes, payload: bytes, buffer_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for trailing, preamble in [(b"", b""), (b" \t", b"preamble" + line_break)]:
        data = body(line_break, BOUNDARY, payload=payload, trailing=trailing, preamble=preamble)
        ours = parse(data, BOUNDARY, BoundaryDecoder, monkeypatch, buffer_size)
        theirs = parse(data, BOUNDARY, MultipartDecoder, monkeypatch, buffer_size)
        assert ours == theirs
        assert not isinstance(ours, str) or line_break == b"\r", ours  # only CR-alone bodies may be refused


def test_broken_bodies_fail_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    good = body(b"\r\n", BOUNDARY, payload=b"x")
    for data in [good[:-30], good.replace(b"Content-Disposition", b"Content-Dispositio"), b"--" + BOUNDARY, b""]:
        assert parse(data, BOUNDARY, BoundaryDecoder, monkeypatch, 1024) == parse(
            data, BOUNDARY, MultipartDecoder, monkeypatch, 1024
        )


def test_a_new_boundary_per_request_compiles_no_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the module: werkzeug's decoder compiles two patterns per new boundary, ours none.

    Counted, not timed: Python's regex cache calls its compiler only on a miss.
    """
    compiled = []
    compile_pattern = re._compiler.compile  # type: ignore[attr-defined]  # the regex cache's miss path

    def counting(*args, **kwargs):
        compiled.append(args[0])
        return compile_pattern(*args, **kwargs)

    monkeypatch.setattr(re._compiler, "compile", counting)  # type: ignore[attr-defined]  # as above

    def compilations(decoder: type, salt: int) -> int:
        compiled.clear()
        for i in range(20):
            boundary = b"%032x" % (salt + i)  # a fresh random-looking boundary per request, as clients send
            parse(body(b"\r\n", boundary, payload=b"x" * 300), boundary, decoder, monkeypatch, 64 * 1024)
        return len(compiled)

    compilations(BoundaryDecoder, 10**9)  # warm: the placeholder's patterns are compiled once per process
    assert compilations(BoundaryDecoder, 2 * 10**9) == 0
    assert compilations(MultipartDecoder, 3 * 10**9) == 40
