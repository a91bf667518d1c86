"""Where a request's CPU goes: py-spy on the service's workers under wrk load, summarised.

Builds the benchmark's models (or reuses `--workdir` from `bench/benchmark.py --keep`), starts the
service as the benchmark does, drives it with wrk (16 clients, the benchmark's multipart uploads)
and records every worker with py-spy (`--subprocesses`; idle threads left out; time in C code is
charged to the Python frame that called it), then again with `--gil` (only the thread holding the
GIL: the Python work that serialises a worker). Prints the share of samples per cost category and the top functions outside
the model call; the raw collapsed stacks are kept in `--out` for flame graphs.

    .venv/bin/python bench/profile.py --model cnn --seconds 20 --out /tmp/profile

Needs py-spy (requirements-dev.txt) and permission to read other processes' memory (root, or
`kernel.yama.ptrace_scope=0`; in a container, `--cap-add SYS_PTRACE`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import benchmark  # noqa: E402

PY_SPY = str(Path(sys.executable).with_name("py-spy"))

CATEGORIES: tuple[tuple[str, str], ...] = (
    # (category, regex over one frame "function (file:line)"); the first frame from the leaf up that
    # matches decides, so a library called from service code is charged to the library.
    ("model call (TensorFlow)", r"tensorflow|_pywrap|keras/|(_call_padded|<locals>\.call) \([^)]*service/runner\.py"),
    ("image decode and resize (Pillow)", r"PIL/|libjpeg|libpng|_imaging|ImagingDecode|ImagingResample"),
    ("numpy (scaling, casts, concatenation)", r"numpy/|_multiarray|libopenblas"),
    ("metrics (prometheus_client)", r"prometheus_client"),
    ("JSON (orjson, json)", r"orjson|json/|service/api/json\.py"),
    ("logging", r"logging/"),
    ("multipart and form parsing (werkzeug)", r"werkzeug/(formparser|sansio/multipart|datastructures)"),
    ("Flask and werkzeug request handling", r"flask/|werkzeug/"),
    ("request reading and worker loop (service/worker.py, slow_clients)", r"service/(worker|slow_clients)\.py"),
    ("gunicorn", r"gunicorn/"),
    (
        "thread hand-offs (batcher queue, futures, gunicorn's thread pool, wake-ups)",
        r"service/batching\.py|concurrent/futures|threading\.py",
    ),
    ("kerasserve request path (api, protocols, data plane, preprocessing)", r"service/"),
)
FALLBACK = ("C library and kernel (I/O, locks, allocation)", r"libc|libpthread|\[kernel|syscall|epoll|recv|send")
"""Charged only when no frame of the stack matches a category (libc under Pillow is Pillow's cost)."""


WAITING = re.compile(
    r"^(Condition\.wait|Event\.wait|Queue\.get|SimpleQueue\.get|_worker|DelayedQueue\.get|Thread\.join|"
    r"[\w.]*[Ss]elector\.select|select|poll|sleep|InotifyFD\._check_inotify_fd|_serve) \("
)
"""Innermost Python frames of a thread that waits (py-spy does not always tell these from running
ones when the host is busy): such samples are not CPU and are left out."""


def categorise(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, pattern in CATEGORIES:
            if re.search(pattern, frame):
                return name
    if any(re.search(FALLBACK[1], frame) for frame in stack):
        return FALLBACK[0]
    return "other"


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw format: `frame;frame;...;leaf COUNT` per line (root first)."""
    stacks = []
    for line in path.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks.append((head.split(";"), int(count)))
    return stacks


def is_model(stack: list[str]) -> bool:
    return categorise(stack) == "model call (TensorFlow)"


def summarise(path: Path, top: int = 25) -> str:
    every = read_collapsed(path)
    stacks = [(stack, count) for stack, count in every if not WAITING.match(stack[-1])]
    waiting = sum(count for _, count in every) - sum(count for _, count in stacks)
    total = sum(count for _, count in stacks) or 1
    categories: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    non_model = 0
    for stack, count in stacks:
        category = categorise(stack)
        categories[category] += count
        if category == "model call (TensorFlow)":
            continue
        non_model += count
        for frame in set(stack):
            if "(" in frame and not frame.startswith(("<module>", "run (", "_bootstrap")):
                inclusive[re.sub(r":\d+\)", ")", frame)] += count
    lines = [
        f"{path.name}: {total} samples ({waiting} more of waiting threads left out), "
        f"{non_model / total:.0%} outside the model call",
        "",
    ]
    lines += ["| category | share of all samples | share of non-model samples |", "|---|---:|---:|"]
    for name, count in categories.most_common():
        share_non_model = "-" if name == "model call (TensorFlow)" else f"{count / max(non_model, 1):.0%}"
        lines.append(f"| {name} | {count / total:.1%} | {share_non_model} |")
    lines += ["", f"Top {top} functions outside the model call (inclusive, share of non-model samples):", ""]
    lines += ["| function (file) | share |", "|---|---:|"]
    for frame, count in inclusive.most_common(top):
        lines.append(f"| `{frame}` | {count / max(non_model, 1):.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="cnn", choices=sorted(benchmark.CASES))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=benchmark.TARGET_CONCURRENCY)
    parser.add_argument("--images", default=None, help="file pattern of the request images (default: the model's)")
    parser.add_argument("--workdir", type=Path, default=None, help="a kept benchmark work folder (models, images)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "kerasserve-profile")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or not Path(PY_SPY).exists():
        print("needs wrk (apt-get install -y wrk) and py-spy (requirements-dev.txt)", file=sys.stderr)
        return 2
    case = benchmark.CASES[args.model]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kerasserve-profile-"))
    if not (workdir / f"models-{case.key}").exists():
        benchmark.log(f"building models and images in {workdir}")
        benchmark.run_python("build", str(workdir), "0")
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = benchmark.write_bodies(
        sorted((workdir / "images").glob(args.images or case.image_glob)), workdir / "bodies", case.image_type
    )
    with benchmark.service_server(case, workdir, dict(case.service_env)) as server:
        benchmark.run_wrk(server, bodies, args.clients, 2)
        reports = []
        # Without --native: C time (Pillow, TensorFlow) is charged to the Python frame that called it.
        # With --native, reading TensorFlow's symbols alone takes py-spy over a minute, and waiting
        # threads show up in C frames `WAITING` cannot recognise.
        for name, flags in (("all-threads", []), ("gil", ["--gil"])):
            raw = args.out / f"{case.key}{'-' + args.images.split('*')[0] if args.images else ''}-{name}.txt"
            spy = subprocess.Popen(
                [
                    PY_SPY,
                    "record",
                    "--pid",
                    str(server.process.pid),
                    "--subprocesses",
                    *flags,
                    "--rate",
                    "100",
                    "--duration",
                    str(int(args.seconds)),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            benchmark.log(f"py-spy {name}: {args.seconds:g} s under wrk load")
            # py-spy takes a while to attach (reading symbols): keep wrk running until it is done.
            while spy.poll() is None:
                benchmark.run_wrk(server, bodies, args.clients, 5)
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode()[-2000:] if spy.stderr else ''}")
            reports.append(summarise(raw))
    print("\n".join(reports))
    (args.out / f"{case.key}-summary.md").write_text("\n".join(reports))
    benchmark.log(f"raw stacks and summary in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
