"""Benchmark the gateway's journal: what writing each call costs, with and without fdatasync.

    python -m benchmarks.journal [--calls 200000] [--batch 32] [--fsync]

Runs the journal as the gateway does, in an event loop, on a fresh directory: calls are accepted
in groups of `--batch` (each acceptance written at once; with --fsync the group waits for one
fdatasync), finish a loop turn later (their usage events written in one batch), and JetStream's
acknowledgement of the group comes a turn after that. Reports CPU and wall time per call, the
bytes written per call, the write(2) calls, and what encoding the usage event alone costs (the
publisher encoded it before the journal existed; now it publishes the journal's encoding).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import msgspec

from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.services.gateway.pipeline import journal_segments as journal_module
from switchyard_gateway.services.gateway.pipeline.call import Call, InferenceRequest
from switchyard_gateway.services.gateway.pipeline.journal import Journal
from switchyard_gateway.services.gateway.translate.doors import Door

BODY = json.dumps({"model": "llama3.2", "stream": True, "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Summarise the journal in one line, please."}]}).encode()


def calls(n: int) -> list[Call]:
    request = msgspec.json.decode(BODY, type=InferenceRequest)
    door = Door("/v1/chat/completions", request, BODY)
    return [Call(door, "tenant-07", "sy-0badc0de", request, f"req-{i:08d}", BODY, time.perf_counter())
            for i in range(n)]


def usage(call: Call) -> UsageRecorded:
    return UsageRecorded(event_id=call.event_id, request_id=call.request_id, tenant_id=call.tenant_id,
                         key_id=call.key_id, model="llama3.2", requested_model="llama3.2", api=call.api, outcome="ok",
                         status=200, input_tokens=23, output_tokens=64, stream=True, endpoint_id="ollama-1",
                         provider_id="local", upstream_model="llama3.2", attempts=1, duration_ms=812.4, ttfb_ms=41.0,
                         overhead_ms=0.61)


async def run(calls_total: int, batch: int, fsync: bool, directory: Path) -> dict:
    journal = Journal(directory, "bench", fsync=fsync)
    await journal.open()
    made = calls(calls_total)
    events = [usage(call) for call in made]
    writes = 0
    real_write = journal_module.os.write

    def counting_write(fd: int, data: bytes) -> int:
        nonlocal writes
        writes += 1
        return real_write(fd, data)

    with mock.patch.object(journal_module.os, "write", counting_write):
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, calls_total, batch):
            group = range(start, min(start + batch, calls_total))
            last = 0
            for i in group:
                last = journal.accepted(made[i], "llama3.2")
            await journal.written(last)
            await asyncio.sleep(0)                      # the calls run
            for i in group:
                journal.finished(events[i])
            await asyncio.sleep(0)                      # the publisher sends them; JetStream acknowledges
            journal.acknowledged([events[i].event_id for i in group])
            await asyncio.sleep(0)
        await journal.written(journal.files.appended)   # the last batch written
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    size = sum(p.stat().st_size for p in directory.rglob("seg-*.jsonl"))
    segments_left = len(list(directory.rglob("seg-*.jsonl")))
    journal.close()
    scaffold = await _loop_turns(calls_total // batch * 3)
    started = time.process_time()
    for event in events:
        encode(event)
    encode_s = time.process_time() - started
    return {"calls": calls_total, "batch": batch, "fsync": fsync,
            "cpu_us_per_call": round((cpu - scaffold) / calls_total * 1e6, 2),
            "wall_us_per_call": round(wall / calls_total * 1e6, 2),
            "event_encoding_us_per_call": round(encode_s / calls_total * 1e6, 2),
            "write_calls_per_call": round(writes / calls_total, 2),
            "segment_bytes_at_end": size, "segments_left": segments_left, "segments_written": journal.files.segment}


async def _loop_turns(turns: int) -> float:
    """CPU seconds the benchmark's own loop turns take (subtracted from the journal's figure)."""
    started = time.process_time()
    for _ in range(turns):
        await asyncio.sleep(0)
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.journal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=32, help="calls accepted per loop turn (default: %(default)s)")
    parser.add_argument("--fsync", action="store_true", help="fdatasync each batch (SWITCHYARD_JOURNAL_FSYNC)")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="switchyard-journal-bench-"))
    try:
        result = asyncio.run(run(args.calls, args.batch, args.fsync, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
