"""In-process micro-benchmarks of revproxy's sans-IO codecs (VMess body and headers, Mux.Cool
frames); run by ``scripts/bench --micro`` or ``python -m bench.micro [--json]``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from revproxy.mux.frame import FrameDecoder, encode_keep_chunks
from revproxy.proxy.vmess.body import request_body_reader, request_body_writer
from revproxy.proxy.vmess.crypto import User
from revproxy.proxy.vmess.header import (
    COMMAND_TCP,
    RequestDecoder,
    ResponseDecoder,
    new_request_header,
    seal_request,
    seal_response,
    security_from_name,
)
from revproxy.proxy.vmess.replay import MemoryReplayFilter

SECURITIES = ("aes-128-gcm", "chacha20-poly1305", "none")
PAYLOAD = 16 * 1024  # one VMess chunk as revproxy writes it
RECV = 64 * 1024  # what a relay's recv() hands the decoders


@dataclass
class Result:
    name: str
    ops_per_s: float
    mb_per_s: float | None  # payload bytes, 10^6/s; None where bytes mean nothing
    unit: str


def _best_rate(step: Callable[[], int], seconds: float, repeat: int) -> float:
    """Best over ``repeat`` runs of units/s, each run calling ``step`` (which returns how many
    units it did) until ``seconds`` have passed."""
    best = 0.0
    for _ in range(repeat):
        done = 0
        start = time.perf_counter()
        while True:
            done += step()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, done / elapsed)
    return best


def _slices(data: bytes, size: int) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + size] for i in range(0, len(data), size)]


def bench_body(security: str, seconds: float, repeat: int) -> list[Result]:
    header = new_request_header(COMMAND_TCP, "127.0.0.1", 80, security_from_name(security))
    payload = os.urandom(PAYLOAD)
    writer = request_body_writer(header)

    def seal() -> int:
        writer.seal(payload)
        return 1

    sealed = request_body_writer(header)
    stream = b"".join(sealed.seal(payload) for _ in range(256))  # 4 MiB of payload
    pieces = _slices(stream, RECV)

    def open_() -> int:
        reader = request_body_reader(header)
        chunks = 0
        for piece in pieces:
            chunks += len(reader.feed(piece))
        return chunks

    out = []
    for name, step in (("seal", seal), ("open", open_)):
        rate = _best_rate(step, seconds, repeat)
        out.append(Result(f"VMess body {name} {security} 16 KiB", rate, rate * PAYLOAD / 1e6,
                          "chunks/s"))
    return out


def bench_header(seconds: float, repeat: int) -> list[Result]:
    user = User(str(uuid.uuid4()))
    security = security_from_name("aes-128-gcm")

    def seal() -> int:
        seal_request(user.cmd_key, new_request_header(COMMAND_TCP, "127.0.0.1", 80, security))
        return 1

    headers = [new_request_header(COMMAND_TCP, "127.0.0.1", 80, security) for _ in range(2000)]
    requests = [seal_request(user.cmd_key, h) for h in headers]

    def open_() -> int:
        replay = MemoryReplayFilter()  # fresh, so the same AuthIDs are not replays
        for request in requests:
            RequestDecoder([user], replay).feed(request)
        return len(requests)

    responses = [seal_response(h) for h in headers[:500]]

    def seal_resp() -> int:
        for h in headers[:500]:
            seal_response(h)
        return 500

    def open_resp() -> int:
        for h, response in zip(headers[:500], responses, strict=True):
            ResponseDecoder(h).feed(response)
        return 500

    return [Result(name, _best_rate(step, seconds, repeat), None, "headers/s")
            for name, step in (("VMess request header seal (new + seal)", seal),
                               ("VMess request header open (1 user)", open_),
                               ("VMess response header seal", seal_resp),
                               ("VMess response header open", open_resp))]


def bench_mux(seconds: float, repeat: int) -> list[Result]:
    out = []
    for frame in (8 * 1024, 1024):
        data = os.urandom(64 * 1024)
        per_call = len(data) // frame

        def encode(data: bytes = data, frame: int = frame, per_call: int = per_call) -> int:
            encode_keep_chunks(7, data, frame)
            return per_call

        stream = b"".join(encode_keep_chunks(7, data, frame) for _ in range(64))  # 4 MiB
        pieces = _slices(stream, RECV)
        frames = per_call * 64

        def decode(pieces: list[memoryview] = pieces, frames: int = frames) -> int:
            decoder = FrameDecoder()
            for piece in pieces:
                decoder.feed(piece)
            return frames

        for name, step in (("encode_keep_chunks", encode), ("FrameDecoder.feed", decode)):
            rate = _best_rate(step, seconds, repeat)
            out.append(Result(f"Mux {name} {frame // 1024} KiB frames", rate,
                              rate * frame / 1e6, "frames/s"))
    return out


def run(seconds: float, repeat: int) -> list[Result]:
    results: list[Result] = []
    for security in SECURITIES:
        results += bench_body(security, seconds, repeat)
    results += bench_header(seconds, repeat)
    results += bench_mux(seconds, repeat)
    return results


def table(results: list[Result]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'codec':<{width}}  {'ops/s':>12}  {'unit':<10}  {'MB/s':>8}"]
    for r in results:
        mb = f"{r.mb_per_s:8,.0f}" if r.mb_per_s is not None else f"{'—':>8}"
        lines.append(f"{r.name:<{width}}  {r.ops_per_s:12,.0f}  {r.unit:<10}  {mb}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.micro", description=__doc__)
    parser.add_argument("--time", type=float, default=0.5, help="seconds per run (default 0.5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, best kept (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = run(args.time, args.repeat)
    if args.json:
        from cryptography import __version__ as crypto_version

        print(json.dumps({"python": platform.python_version(), "cryptography": crypto_version,
                          "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
