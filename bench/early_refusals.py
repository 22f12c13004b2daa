"""Large requests refused before their body is read: does each client get the 503, or a broken connection?

    python -m bench.early_refusals [--clients 64] [--requests 5] [--out docs/results/serving/early-refusals/after.txt]

One ``stingy-serve --workers 1`` process with a random ``resnetc20`` and a queue bounded at 0.05 s of work, so
that most requests are refused at once; ``--clients`` httpx clients each send ``--requests`` requests of 256
images (v2 binary, then v2 JSON) one after another. Prints, per format, the answers by status and the transport
errors by kind (a client that finds its connection closed while it still sends the refused body).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
from pathlib import Path

import httpx
import torch

from app.launch import running_server
from bench.ceiling import random_checkpoint
from bench.loadgen import Body, make_body
from bench.serving import load_average, machine, say


async def _send(url: str, body: Body, clients: int, requests: int) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=body.headers, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            for _ in range(requests):
                try:
                    counts[str((await client.post(body.path, content=body.content)).status_code)] += 1
                except httpx.TransportError as error:
                    counts[type(error).__name__] += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report: list[str] = []
    say(report, f"# bench.early_refusals, load average {load_average()}, {machine()}")
    with tempfile.TemporaryDirectory(prefix="stingy-bench-") as scratch:
        checkpoint = random_checkpoint(Path(scratch), "resnetc20", 3, 32, 10)
        pixels = torch.zeros(256, 3, 32, 32, dtype=torch.uint8)
        for fmt in ("v2-binary", "v2-json"):
            body = make_body(fmt, "resnetc20", pixels)
            server_args = ["--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "1", "--access-log", "",
                           "--log-level", "warning", "--max-queue-wait-s", "0.05"]
            with running_server(server_args, log_dir=Path(scratch)) as server:
                counts = asyncio.run(_send(server.url, body, args.clients, args.requests))
            say(report, f"{fmt}: {args.clients} clients x {args.requests} requests of 256 images: {counts}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
