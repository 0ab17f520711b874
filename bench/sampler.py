"""A CPU sampler for a worker, and the report of what it sampled (run by hand).

    .venv/bin/python bench/processors.py --air 20000 --water 0 --stations 0 --sample /tmp/w.stacks
    .venv/bin/python bench/sampler.py /tmp/w.stacks            # inclusive and self shares
    .venv/bin/python bench/sampler.py /tmp/w.stacks --under processors/handlers.py:handle_air

Why, next to ``--profile``: cProfile charges every Python call, so code made of many
small calls (asyncio, faust and aiokafka around the handlers) looks several times
dearer than it is (a worker under cProfile spends 3-5x its CPU per reading, and the
share of the machinery outside the handlers about doubles). py-spy is not installed
here. This sampler costs almost nothing between samples: ``setitimer(ITIMER_PROF)``
interrupts the process every ``interval_s`` of its CPU time (the kernel's tick, 4 ms
here, is the finest it does) and the signal handler records the main thread's Python
stack, where the event loop, the agents and the handlers run. Another thread's CPU
(aiokafka has none; the InfluxDB client none) lands on whatever the main thread was
doing. A Python signal handler runs at the next bytecode: time in C (pydantic-core
validating, the event loop's C parts) is charged to the next Python frame that runs (a
pydantic validator written in Python, ``asyncio.sleep``), so read the self shares of
such frames as "about there". The samples are written as collapsed stacks
(``frame;frame;... count`` per line, as flame graph tools read them).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import re
import signal
import sys
from pathlib import Path
from types import FrameType

#: Frames kept per sample, from the innermost.
DEPTH = 80


#: The repository's path, left out of its files' names.
REPO = str(Path(__file__).resolve().parents[1]) + "/"


def _name(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif (stdlib := _STDLIB.search(path)) is not None:
        path = path[stdlib.end() :]
    elif path.startswith(REPO):
        path = path[len(REPO) :]
    return f"{path}:{code.co_name}"


_STDLIB = re.compile(r"/lib/python3\.\d+/")


class Sampler:
    """Samples the stack of the thread that starts it (the signal's handler runs there)."""

    def __init__(self, out: Path, interval_s: float = 0.001) -> None:
        self.out = out
        self.interval_s = interval_s
        self.samples: collections.Counter[tuple[str, ...]] = collections.Counter()

    def _sample(self, _sig: int, frame: FrameType | None) -> None:
        stack: list[str] = []
        while frame is not None and len(stack) < DEPTH:
            stack.append(_name(frame))
            frame = frame.f_back
        stack.reverse()
        self.samples[tuple(stack)] += 1

    def start(self) -> None:
        self.samples.clear()
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)
        atexit.register(self.stop)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with self.out.open("w") as fh:
            for stack, n in self.samples.items():
                fh.write(f"{';'.join(stack)} {n}\n")


#: The worker under the sampler, from its readiness on (as ``--profile`` does): PATH is
#: replaced by the output file's repr.
WORKER = """
import logging, sys
from pathlib import Path
from bench.sampler import Sampler
sys.argv = ["processors.cli"]
import runpy
sampler = Sampler(Path(PATH))


class Start(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("worker ready"):
            sampler.start()


logging.getLogger("processors.app").addHandler(Start())
try:
    runpy.run_module("processors.cli", run_name="__main__")
finally:
    sampler.stop()
"""


def read(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        out.append((stack.split(";"), int(n)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("stacks", type=Path)
    ap.add_argument("--under", help="only below this frame (file:function), by its callees")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    samples = read(args.stacks)
    total = sum(n for _, n in samples)
    if args.under:
        below: collections.Counter[str] = collections.Counter()
        inside = 0
        for stack, n in samples:
            if args.under in stack:
                i = stack.index(args.under)
                inside += n
                below[stack[i + 1] if i + 1 < len(stack) else "<self>"] += n
        print(f"{100 * inside / total:5.1f}%  {args.under} ({total} samples)")
        for name, n in below.most_common(args.top):
            print(f"{100 * n / total:5.1f}%    {name}")
        return 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for stack, n in samples:
        for name in set(stack):
            inclusive[name] += n
        own[stack[-1]] += n
    print(f"{total} samples; inclusive (the frame anywhere on the stack):")
    for name, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {name}")
    print("self (the innermost frame):")
    for name, n in own.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
