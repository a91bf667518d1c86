"""A bounded open-loop HTTP load generator: requests at a constant arrival rate, whatever the answers do.

wrk (and every closed-loop client) sends a connection's next request only once the previous answer
arrived, so a slow server slows its own load and hides its queueing ("coordinated omission"). Here
request i is due at `start + i / rate`; it is sent then on an idle keep-alive connection (a new one
is opened when none is idle) and its latency counts from when it was due, not from when it could be
sent. Bounded: at most `max_connections` requests in flight; a request due while all are busy is
counted as `dropped` and not sent (the server is past saturation), and the run lasts `duration`
seconds plus at most `timeout` for the last answers.

wrk2 (wrk with a constant rate) is not packaged by Debian, and `hey -q` limits the rate of each of
its closed-loop workers, which is still a closed loop; hence this script (asyncio, standard library
only). Its own CPU is reported by the benchmark beside the server's.

    python bench/openloop.py URL CONTENT_TYPE RATE DURATION_S WARMUP_S MAX_CONNECTIONS FILE [FILE ...]

prints one line `OPENLOOP_JSON {...}`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class OpenLoopResult:
    rate: float
    """Arrival rate asked for, requests/s."""
    seconds: float
    """Time over which requests were due."""
    due: int = 0
    sent: int = 0
    ok: int = 0
    non2xx: int = 0
    errors: int = 0
    """Connection errors and timeouts."""
    dropped: int = 0
    """Due while `max_connections` requests were in flight: never sent."""
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    achieved_rps: float = 0.0
    """Answers (any status) per second of the run."""
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def encode_requests(url: str, content_type: str, bodies: list[bytes]) -> list[bytes]:
    """Whole HTTP/1.1 keep-alive POST requests, one per body, encoded once."""
    parts = urlsplit(url)
    path = parts.path or "/"
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
    return [(head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in bodies]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, whether the connection may be reused)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, keep = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    if length:
        await reader.readexactly(length)
    return status, keep


async def run(
    url: str,
    content_type: str,
    bodies: list[bytes],
    rate: float,
    duration: float,
    max_connections: int = 256,
    timeout: float = 10.0,
    warmup: float = 0.0,
) -> OpenLoopResult:
    """Send requests at `rate`/s for `warmup` + `duration` s (see the module docstring); return what
    happened to those due after the warm-up (which opens the connections the rate needs)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = encode_requests(url, content_type, bodies)
    boundary = content_type.partition("boundary=")[2].encode()

    def fresh_boundary(request: bytes) -> bytes:
        """A new multipart boundary of the same length per request, as real clients send (requests, curl)."""
        if not boundary:
            return request
        return request.replace(boundary, os.urandom(len(boundary)).hex()[: len(boundary)].encode())

    result = OpenLoopResult(rate=rate, seconds=duration)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    in_flight = 0
    tasks: set[asyncio.Task] = set()

    async def one(payload: bytes, due_at: float, counted: bool) -> None:
        nonlocal in_flight
        conn = idle.pop() if idle else None
        try:
            while True:
                reused = conn is not None
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                reader, writer = conn
                try:
                    writer.write(payload)
                    status, keep = await asyncio.wait_for(_read_response(reader), timeout)
                    break
                except (ConnectionError, asyncio.IncompleteReadError):
                    writer.close()
                    conn = None
                    if not reused:  # an idle connection the server closed is retried once, fresh
                        raise
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            result.errors += counted
            if conn is not None:
                conn[1].close()
            return
        finally:
            in_flight -= 1
        if counted:
            result.latencies_ms.append((time.perf_counter() - due_at) * 1000)
            if 200 <= status < 300:
                result.ok += 1
            else:
                result.non2xx += 1
        if keep:
            idle.append(conn)
        else:
            writer.close()

    start = time.perf_counter() + 0.05
    first_counted = int(rate * warmup)
    total = first_counted + int(rate * duration)
    interval = 1.0 / rate
    i = 0
    while i < total:
        now = time.perf_counter()
        due_at = start + i * interval
        if due_at > now:
            await asyncio.sleep(due_at - now)
            continue
        while i < total and start + i * interval <= now:  # everything due by now, late ones included
            counted = i >= first_counted
            result.due += counted
            if in_flight >= max_connections:
                result.dropped += counted
            else:
                in_flight += 1
                result.sent += counted
                task = asyncio.create_task(
                    one(fresh_boundary(requests[i % len(requests)]), start + i * interval, counted)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout + 1)
    elapsed = time.perf_counter() - start - warmup
    for reader_writer in idle:
        reader_writer[1].close()
    ordered = sorted(result.latencies_ms)
    result.p50_ms = percentile(ordered, 50)
    result.p99_ms = percentile(ordered, 99)
    result.p999_ms = percentile(ordered, 99.9)
    result.max_ms = ordered[-1] if ordered else 0.0
    result.achieved_rps = len(ordered) / elapsed if elapsed > 0 else 0.0
    return result


def main(argv: list[str]) -> int:
    url, content_type, rate, duration, warmup, max_connections, *files = argv
    bodies = [Path(f).read_bytes() for f in files]
    result = asyncio.run(
        run(url, content_type, bodies, float(rate), float(duration), int(max_connections), warmup=float(warmup))
    )
    summary = asdict(result)
    summary.pop("latencies_ms")
    print("OPENLOOP_JSON " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
