"""The lazy line reader."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler.errors import UsageError
from crawler.inputs import CHUNK, LineSource


async def read_all(path: Path, **kw: int) -> list[str]:
    out: list[str] = []
    async for batch in LineSource(str(path), **kw).batches():
        out.extend(batch)
    return out


async def test_bom_crlf_comments_blanks_and_no_final_newline(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_bytes(b"\xef\xbb\xbfhttp://a/\r\n\r\n  # comment\r\n   http://b/  \n\n#x\nhttp://c/")
    assert await read_all(p) == ["http://a/", "http://b/", "http://c/"]


async def test_invalid_utf8_and_nul_lines_are_kept(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_bytes(b"http://a/\xff\nhttp://b/\x00x\n")
    lines = await read_all(p)
    assert lines == ["http://a/\ufffd", "http://b/\x00x"]


async def test_lines_spanning_chunks(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    lines = [f"http://host/{i:06d}/" + "x" * (i % 300) for i in range(5000)]
    p.write_text("\n".join(lines))
    assert p.stat().st_size > 3 * CHUNK
    assert await read_all(p) == lines


async def test_overlong_line_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_bytes(b"http://a/\n" + b"y" * 3000 + b"\nhttp://b/\n")
    lines = await read_all(p, max_line_bytes=1000)
    assert lines == ["http://a/", "y" * 1000, "http://b/"]


async def test_reads_lazily_in_chunks(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_text("".join(f"http://h/{i}\n" for i in range(200_000)))
    src = LineSource(str(p))
    agen = src.batches()
    first = await agen.__anext__()
    assert 0 < len(first) < 200_000
    assert src.bytes_read < p.stat().st_size
    await agen.aclose()


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read input"):
        LineSource(str(tmp_path / "nope.txt")).open()
    with pytest.raises(UsageError, match="is a directory"):
        LineSource(str(tmp_path)).open()


async def test_stdin_dash(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_text("http://a/\n")
    fd = os.open(p, os.O_RDONLY)
    saved = os.dup(0)
    os.dup2(fd, 0)
    try:
        out = [line async for batch in LineSource("-").batches() for line in batch]
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)
    assert out == ["http://a/"]


@settings(
    max_examples=50,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.binary(max_size=2000))
def test_any_bytes_never_raise(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "fuzz.txt"
    p.write_bytes(data)
    lines = asyncio.run(read_all(p))
    expected = [
        raw.strip().decode("utf-8", "replace")
        for raw in data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
        if raw.strip() and not raw.strip().startswith(b"#")
    ]
    assert lines == expected
