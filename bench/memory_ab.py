"""Issue 22's throughput check: MobileNetV2 at 16 clients with today's memory defaults against the old ones.

One run, both settings, interleaved round by round (the host drifts between runs, so a comparison
across runs says little): "now" is the service's defaults (malloc instead of oneDNN's pool,
batch sizes capped by MAX_BATCH_INPUT_BYTES); "before" is `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0
MAX_BATCH_INPUT_BYTES=0`, the allocator and batch sizes of before issue 22. Each round starts a
server, warms it with 4 s of wrk, then measures 12 s (bench/benchmark.py's wrk client, a fresh
multipart boundary per request) and each worker's RSS.

    .venv/bin/python bench/memory_ab.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402
from memory import rss_mb  # noqa: E402

VARIANTS = {
    "now": {},
    "before": {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "0", "MAX_BATCH_INPUT_BYTES": "0"},
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kerasserve-memory-ab-"))
    benchmark.run_python("build", str(workdir), "0")
    case = benchmark.CASES["mobilenet"]
    images = sorted((workdir / "images").glob(case.image_glob))
    bodies = benchmark.write_bodies(images, workdir / "bodies", case.image_type)
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name, extra in VARIANTS.items():
            with benchmark.service_server(case, workdir, {**case.service_env, **extra}) as server:
                benchmark.run_wrk(server, bodies, 16, 4)
                raw = benchmark.run_wrk(server, bodies, 16, 12)
                rss = statistics.mean(rss_mb(pid) for pid in benchmark.worker_pids(server.process.pid))
            rps = raw["requests"] / (raw["duration_us"] / 1e6)
            runs[name].append((rps, raw["p99_us"] / 1e3, rss))
            print(f"round {round_} {name}: {rps:.1f} req/s, p99 {raw['p99_us'] / 1e3:.0f} ms, RSS {rss:.0f} MiB")
    for name, points in runs.items():
        print(
            f"{name}: median {statistics.median(p[0] for p in points):.1f} req/s "
            f"(runs {', '.join(f'{p[0]:.1f}' for p in points)}), p99 median "
            f"{statistics.median(p[1] for p in points):.0f} ms, RSS per worker median "
            f"{statistics.median(p[2] for p in points):.0f} MiB"
        )
    now, before = (statistics.median(p[0] for p in runs[n]) for n in ("now", "before"))
    print(f"now / before: {now / before:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
