"""service.worker.CoalescingResponse: the headers leave with the first body bytes, in one send().

gunicorn's own Response (headers made by gunicorn) over a socket stand-in that records each
`sendall`: what the kernel would get, one call per system call.
"""

from __future__ import annotations

from types import SimpleNamespace

from gunicorn.config import Config

from service.worker import COALESCE_BYTES, CoalescingResponse


class RecordingSocket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def respond(body_chunks: list[bytes], *, method: str = "POST", length: bool = True, status: str = "200 OK"):
    sock = RecordingSocket()
    request = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False)
    response = CoalescingResponse(request, sock, Config())
    headers = [("Content-Type", "application/json")]
    if length:
        headers.append(("Content-Length", str(sum(map(len, body_chunks)))))
    response.start_response(status, headers)
    for chunk in body_chunks:
        response.write(chunk)
    response.close()
    return sock.sends


def test_a_json_answer_is_one_send_holding_headers_and_body() -> None:
    (sent,) = respond([b'{"predictions": [[0.1, 0.9]]}'])
    head, body = sent.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 29" in head
    assert body == b'{"predictions": [[0.1, 0.9]]}'


def test_later_chunks_follow_in_their_own_sends() -> None:
    sends = respond([b"a" * 10, b"b" * 10])
    assert len(sends) == 2
    assert sends[0].endswith(b"\r\n\r\n" + b"a" * 10)
    assert sends[1] == b"b" * 10


def test_an_answer_without_a_body_still_gets_its_headers() -> None:
    (head,) = respond([], method="HEAD")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    (head,) = respond([], status="204 No Content", length=False)
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n")


def test_a_large_body_is_not_copied_to_join_the_headers() -> None:
    big = b"x" * (COALESCE_BYTES + 1)
    head, body = respond([big])
    assert head.endswith(b"\r\n\r\n") and body == big


def test_a_chunked_answer_keeps_gunicorns_framing() -> None:
    sends = respond([b"hello"], length=False)
    joined = b"".join(sends)
    assert b"Transfer-Encoding: chunked" in joined
    assert joined.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
