"""A stand-in worker for benchmarks/coordinator.py: it speaks crawler.shards' frames and
answers at once, fetching nothing, so only the coordinator's own work is measured.

Each LINES batch is claimed (fingerprints: the lines' hashes) and every fresh line gets a
record of about the size of a real one (~420 bytes); END is answered with DONE.
"""

from __future__ import annotations

import pickle
import struct
import sys

import orjson

from crawler import shards
from crawler.stats import Stats

_HEAD = struct.Struct("<BI")
_TEMPLATE = {
    "final_url": None, "status": 200, "ok": True, "error": None, "attempts": 1,
    "elapsed_ms": 1.2, "bytes": 512, "content_type": "text/html", "depth": 0,
    "parent": None, "redirects": [], "body_path": None, "sha256": None, "method": None,
    "meta": None, "location": None, "proxy": None, "headers": None, "request_headers": None,
    "body": None, "body_encoding": None, "not_modified": None,
    "fetched_at": "2026-12-01T00:00:00.000000+00:00", "ip": "127.0.0.1",
}  # fmt: skip


def main() -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    pending: dict[int, tuple[list[str], list[int]]] = {}
    done = 0
    ended = False
    while True:
        head = inp.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return
        kind, size = _HEAD.unpack(head)
        payload = inp.read(size) if size else b""
        if kind == shards.LINES:
            batch, lines = shards.read_lines(payload)
            fps = [hash(line) & 0xFFFF_FFFF_FFFF_FFFF or 1 for line in lines]
            pending[batch] = (lines, fps)
            out.write(shards.ids_frame(shards.CLAIM, batch, shards.fingerprints(fps)))
        elif kind == shards.ANSWER:
            batch, answers = shards.read_ids(payload)
            lines, fps = pending.pop(batch)
            fresh = [i for i, a in enumerate(answers) if a == 1]
            data = b"".join(orjson.dumps({"url": lines[i], **_TEMPLATE}) + b"\n" for i in fresh)
            out.write(shards.records_frame([fps[i] for i in fresh], data))
            done += len(fresh)
        elif kind == shards.END:
            ended = True
        if ended and not pending:
            stats = Stats(lambda: 0.0)
            stats.done = stats.ok = done
            tally = shards.tally(stats, 0, 0)
            out.write(shards.frame(shards.DONE, pickle.dumps(
                {"tally": tally, "interrupted": False, "timed_out": False}
            )))  # fmt: skip
            out.flush()
            return
        out.flush()


if __name__ == "__main__":
    main()
