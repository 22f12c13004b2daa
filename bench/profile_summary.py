"""Where a profiled server spent its time: a summary of ``py-spy record --format raw`` (collapsed stacks).

    py-spy record --pid PID --duration 10 --rate 200 --format raw --gil --threads --output server.raw
    python -m bench.profile_summary server.raw --top 40

For each function (file shown from the package on), the share of samples in which it is on the stack
(inclusive) and at the top of the stack (self). With ``--gil`` py-spy samples only the thread holding the
GIL, so the shares are of the Python work that serialises the server.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"(?P<function>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``function (file)`` with the file from its package on (``site-packages/`` and the checkout dropped)."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    file = match["file"].split("site-packages/")[-1]
    for root in ("/app/", "/bench/", "/training/", "/defense/"):
        if root in file:
            file = root.strip("/") + "/" + file.split(root, 1)[1]
    return f"{match['function']} ({file})"


def summarise(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, inclusive samples per function, self samples per function) of collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        names = [frame_name(frame) for frame in stack.split(";")]
        for name in set(names):
            inclusive[name] += samples
        own[names[-1]] += samples
    return total, inclusive, own


def report(path: Path, top: int) -> str:
    total, inclusive, own = summarise(path.read_text())
    if total == 0:
        raise SystemExit(f"profile_summary: {path} holds no samples")
    lines = [f"{path.name}: {total} samples", "", "inclusive:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top // 2)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="py-spy raw output (collapsed stacks)")
    parser.add_argument("--top", type=int, default=40, help="functions to list")
    args = parser.parse_args(argv)
    print(report(args.profile, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
