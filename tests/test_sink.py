"""The sink on its own: whole JSON lines, written in batches, committed with their URLs,
and a resumed run cutting the output back to what the state file committed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from crawler.config import SinkConfig
from crawler.dedup import fingerprint
from crawler.errors import UsageError
from crawler.records import Record
from crawler.sink import Sink
from crawler.state import StateStore
from crawler.stores import DONE_BEFORE, FRESH

IDENTITY: dict[str, Any] = {"input": "urls.txt"}


def url(n: int) -> str:
    return f"http://a.test/{n}"


async def write(sink: Sink, numbers: range, *, close: bool = True) -> None:
    runner = asyncio.create_task(sink.run())
    for n in numbers:
        await sink.put(Record(url=url(n), status=200, ok=True), fingerprint(url(n)))
    sink.close()
    await runner
    if close:
        await sink.aclose()


async def test_every_record_is_one_whole_line_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    sink = Sink(SinkConfig(output=str(out), batch_records=7, batch_bytes=300))
    await sink.open()
    await write(sink, range(1000))
    lines = out.read_bytes().split(b"\n")
    assert lines.pop() == b""
    assert [orjson.loads(line)["url"] for line in lines] == [url(n) for n in range(1000)]
    assert sink.written == sink.records == 1000
    assert sink.bytes_written == out.stat().st_size


async def test_close_writes_what_is_left_and_aclose_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    # A batch that would wait an hour to fill: close() must not wait for it.
    sink = Sink(SinkConfig(output=str(out), batch_records=10_000, flush_interval=3600.0))
    await sink.open()
    await asyncio.wait_for(write(sink, range(3)), 30)
    await sink.aclose()
    assert len(out.read_bytes().splitlines()) == 3


async def test_a_checkpoint_commits_the_written_records_with_their_offset(
    tmp_path: Path,
) -> None:
    out, path = tmp_path / "out.jsonl", tmp_path / "state"
    state = StateStore(str(path), IDENTITY)
    await state.open()
    sink = Sink(SinkConfig(output=str(out)), state)
    await sink.open()
    await state.claim([fingerprint(url(n)) for n in range(10)])
    await write(sink, range(10))
    await state.aclose()
    size = out.stat().st_size
    state = StateStore(str(path), IDENTITY)
    await state.open()
    try:
        assert state.committed_offset == size
        fps = [fingerprint(url(n)) for n in range(12)]
        assert await state.claim(fps) == [DONE_BEFORE] * 10 + [FRESH] * 2
    finally:
        await state.aclose()


async def test_resume_cuts_a_torn_and_uncommitted_tail(tmp_path: Path) -> None:
    out, path = tmp_path / "out.jsonl", tmp_path / "state"
    state = StateStore(str(path), IDENTITY)
    await state.open()
    sink = Sink(SinkConfig(output=str(out)), state)
    await sink.open()
    await write(sink, range(5))
    await state.aclose()
    committed = out.read_bytes()
    # A run killed after writing more records than it committed, the last one torn.
    with out.open("ab") as f:
        f.write(b'{"url":"http://a.test/99","ok":true}\n' * 100 + b'{"url":"http://a.te')
    state = StateStore(str(path), IDENTITY)
    await state.open()
    sink = Sink(SinkConfig(output=str(out)), state)
    await sink.open()
    await write(sink, range(5, 7))
    await state.aclose()
    data = out.read_bytes()
    assert data.startswith(committed)
    assert [orjson.loads(line)["url"] for line in data.splitlines()] == [url(n) for n in range(7)]


async def test_resume_refuses_an_output_shorter_than_committed(tmp_path: Path) -> None:
    out, path = tmp_path / "out.jsonl", tmp_path / "state"
    state = StateStore(str(path), IDENTITY)
    await state.open()
    sink = Sink(SinkConfig(output=str(out)), state)
    await sink.open()
    await write(sink, range(5))
    await state.aclose()
    out.write_bytes(out.read_bytes()[:10])
    state = StateStore(str(path), IDENTITY)
    await state.open()
    try:
        with pytest.raises(UsageError, match="has 10 bytes but --state says"):
            await Sink(SinkConfig(output=str(out)), state).open()
    finally:
        await state.aclose()
