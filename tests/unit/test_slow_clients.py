"""PendingRequest: how far the event loop reads a request before a thread gets it (service.slow_clients)."""

from __future__ import annotations

import pytest

from service.slow_clients import BUFFERED_BODY_BYTES, MAX_HEAD_BYTES, PendingRequest

BUDGET = 64 * 1024 * 1024


def fed(*chunks: bytes, budget: int = BUDGET) -> PendingRequest:
    pending = PendingRequest(object(), b"", deadline=10.0)
    for chunk in chunks:
        pending.feed(chunk, now=1.0, body_timeout_s=60.0, budget=budget)
    return pending


def test_a_request_without_a_body_is_ready_when_its_headers_are_in() -> None:
    pending = fed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"\r\n")
    assert pending.ready and pending.is_probe and not pending.to_thread
    assert pending.deadline == 61.0  # the body deadline starts with the end of the headers


def test_headers_in_pieces_are_not_ready_until_the_blank_line() -> None:
    pending = fed(b"GET /healthz HTTP/1.1\r\n", b"Host: x\r", b"\n")
    assert not pending.ready and pending.deadline == 10.0


def test_a_content_length_body_is_buffered_whole_with_what_follows() -> None:
    head = b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
    assert not fed(head, b"abcd").ready
    pending = fed(head, b"abcd", b"eGET / HTTP/1.1\r\n")
    assert pending.ready and not pending.to_thread and not pending.is_probe
    assert pending.body_end == len(head) + 5 and pending.reserved == 5


def test_a_chunked_body_is_buffered_up_to_its_last_chunk_and_trailers() -> None:
    head = b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert not fed(head, b"3;ext=1\r\nabc\r\n", b"0\r\n").ready
    pending = fed(head, b"3;ext=1\r\nabc\r\n", b"0\r\nX-Trailer: 1\r\n\r\n")
    assert pending.ready and not pending.to_thread
    assert pending.body_end == len(pending.data)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /p HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (BUFFERED_BODY_BYTES + 1),
        b"POST /p HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"NONSENSE\r\n\r\n",
    ],
)
def test_large_unusual_or_malformed_requests_go_to_a_thread_once_their_headers_are_in(head: bytes) -> None:
    pending = fed(head)
    assert pending.ready and pending.to_thread and pending.reserved == 0


def test_a_body_beyond_the_workers_budget_goes_to_a_thread() -> None:
    pending = fed(b"POST /p HTTP/1.1\r\nContent-Length: 100\r\n\r\n", budget=99)
    assert pending.ready and pending.to_thread


def test_a_chunked_body_over_the_cap_goes_to_a_thread() -> None:
    chunk = b"%x\r\n" % BUFFERED_BODY_BYTES + b"a" * BUFFERED_BODY_BYTES + b"\r\n"
    pending = fed(b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", chunk)
    assert pending.ready and pending.to_thread


def test_headers_are_read_no_further_than_one_byte_over_the_cap() -> None:
    pending = fed(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * MAX_HEAD_BYTES)
    assert pending.head_too_large and pending.read_size == 1
    assert fed(b"GET / HTTP/1.1\r\n").read_size == MAX_HEAD_BYTES + 1 - len(b"GET / HTTP/1.1\r\n")
