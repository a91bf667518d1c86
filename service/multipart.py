"""Multipart uploads: werkzeug's parser, without a regular expression compiled per request, in memory.

werkzeug's `MultipartDecoder` compiles two regular expressions that embed the request's boundary.
Real clients (requests, curl, browsers) draw a random boundary for every request, so Python's
regex cache never hits and every upload pays two pattern compilations: measured here, 283 µs per
request against 43 µs with a repeated boundary, for a one-file form; that was a fifth of the
service's own CPU per request on the small CNN. `BoundaryPattern` finds the same matches with
`bytes.find` and one fixed expression for what may follow a boundary; `BoundaryDecoder` is
werkzeug's decoder with those two patterns swapped in, and everything else werkzeug's own.

File parts stay in memory (`ServiceRequest`): werkzeug spools a part over 500 KB to a temporary
file on disk; here the body is already in memory (the worker reads it whole, bounded by
MAX_REQUEST_BYTES), so a disk round trip per large photo buys nothing.

`install()` makes werkzeug's form parser use `BoundaryDecoder` (a module-level name in
`werkzeug.formparser`, which the form parser looks up per request); `create_app` calls it once.
tests/unit/test_multipart.py checks the decoder against werkzeug's own on the same bodies.
"""

from __future__ import annotations

import io
import re
import typing as t

from flask import Request
from werkzeug import formparser
from werkzeug.sansio.multipart import MultipartDecoder

_AFTER_BOUNDARY = re.compile(rb"(--[^\S\n\r]*(?:\r\n|\n|\r)?|[^\S\n\r]*(?:\r\n|\n|\r))")
"""What may follow `--boundary`: `--` (the last one) or horizontal space, then a line break
(werkzeug's expression without the boundary, which is the part that changes per request)."""

_PLACEHOLDER = b"kerasserve"
"""Boundary werkzeug's constructor compiles its patterns for (once: Python caches them)."""


class _Found:
    """The parts of `re.Match` werkzeug's decoder uses: start(), end(), group(1)."""

    __slots__ = ("_start", "_end", "_tail")

    def __init__(self, start: int, end: int, tail: bytes) -> None:
        self._start, self._end, self._tail = start, end, tail

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, index: int) -> bytes:
        if index != 1:
            raise IndexError(index)
        return self._tail


class BoundaryPattern:
    """`re.compile(rb"<line break>--<boundary>(--\\h*<line break>?|\\h*<line break>)")`'s `search`, compiled never.

    With `line_break_optional` the line break before the boundary may be missing (werkzeug's
    preamble pattern: the body may start with the boundary). Leftmost match, as `re.search`.
    """

    def __init__(self, boundary: bytes, *, line_break_optional: bool) -> None:
        self._needle = b"--" + boundary
        self._optional = line_break_optional

    def search(self, data: bytes | bytearray, pos: int = 0) -> _Found | None:
        needle = self._needle
        at = data.find(needle, pos)
        while at != -1:
            if at - 2 >= pos and data[at - 2 : at] == b"\r\n":
                start = at - 2
            elif at - 1 >= pos and data[at - 1 : at] in (b"\n", b"\r"):
                start = at - 1
            elif self._optional:
                start = at
            else:
                start = -1
            if start != -1:
                tail = _AFTER_BOUNDARY.match(data, at + len(needle))
                if tail is not None:
                    return _Found(start, tail.end(), bytes(tail.group(1)))
            at = data.find(needle, at + 1)
        return None


class BoundaryDecoder(MultipartDecoder):
    """werkzeug's `MultipartDecoder`, finding boundaries with `BoundaryPattern` instead of per-request regexes."""

    def __init__(
        self, boundary: bytes, max_form_memory_size: int | None = None, *, max_parts: int | None = None
    ) -> None:
        # werkzeug's constructor sets every field; its two patterns are compiled for a fixed boundary
        # (a regex cache hit after the first time) and replaced right after.
        super().__init__(_PLACEHOLDER, max_form_memory_size, max_parts=max_parts)
        self.boundary = boundary
        self.preamble_re = BoundaryPattern(boundary, line_break_optional=True)  # type: ignore[assignment]  # duck-typed: search() only
        self.boundary_re = BoundaryPattern(boundary, line_break_optional=False)  # type: ignore[assignment]  # duck-typed: search() only


class ServiceRequest(Request):
    """Flask's request, keeping uploaded files in memory (the body is bounded by MAX_REQUEST_BYTES)."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> t.IO[bytes]:
        return io.BytesIO()


def install() -> None:
    """Make werkzeug's form parser decode multipart bodies with `BoundaryDecoder` (idempotent)."""
    formparser.MultipartDecoder = BoundaryDecoder  # type: ignore[misc]  # the parser looks the class up by this name
