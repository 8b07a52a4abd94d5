"""The storage writers' parts on their own (bodies.py, warc.py): content-addressed body
files, WARC file names, and the repair of a WARC file whose last record a killed run left
torn."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest

from crawler.bodies import _BodyWriter
from crawler.warc import _repair_tail, warc_name


def member(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, 31)  # one gzip member, as each WARC record is
    return z.compress(data) + z.flush()


WARCINFO = member(b"WARC/1.1\r\nWARC-Type: warcinfo\r\n\r\nsoftware: crawler/1.0\r\n\r\n")


def body_file(root: Path, body: bytes) -> Path:
    digest = hashlib.sha256(body).hexdigest()
    return root / digest[:2] / digest


def test_bodies_are_stored_by_content_once_and_whole(tmp_path: Path) -> None:
    root = tmp_path / "bodies"
    writer = _BodyWriter(str(root))
    writer.start()
    bodies = [b"one", b"two", b"one"]
    writer.write([(hashlib.sha256(b).hexdigest(), b) for b in bodies])
    assert body_file(root, b"one").read_bytes() == b"one"
    assert body_file(root, b"two").read_bytes() == b"two"
    assert writer.written == 2  # the equal body is stored once
    assert not list(root.rglob("*.tmp"))  # written under a temporary name, renamed
    writer.sync()


def test_a_body_file_left_short_is_written_again(tmp_path: Path) -> None:
    root = tmp_path / "bodies"
    writer = _BodyWriter(str(root))
    writer.start()
    path = body_file(root, b"complete body")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"comp")  # what a power cut can leave of a renamed file
    writer.write([(path.name, b"complete body")])
    assert path.read_bytes() == b"complete body"


def test_a_save_dir_that_is_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        _BodyWriter(str(tmp_path / "f")).start()


def test_warc_files_rotate_under_numbered_names() -> None:
    assert warc_name("out.warc.gz", 0) == "out.warc.gz"
    assert warc_name("out.warc.gz", 1) == "out-00001.warc.gz"
    assert warc_name("a/out.warc", 12) == "a/out-00012.warc"
    assert warc_name("archive", 3) == "archive-00003"


def test_a_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "out.warc.gz"
    whole = WARCINFO + member(b"WARC/1.1\r\nWARC-Type: response\r\n\r\n" + b"x" * 5000)
    torn = member(b"WARC/1.1\r\nWARC-Type: request\r\n\r\n" + bytes(range(256)) * 40)
    path.write_bytes(whole + torn[: len(torn) // 2])
    assert _repair_tail(str(path)) == len(whole)
    assert path.read_bytes() == whole
    assert _repair_tail(str(path)) == len(whole)  # a whole file is left as it is


def test_a_file_not_ours_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.warc.gz"
    data = member(b"WARC/1.1\r\nWARC-Type: warcinfo\r\n\r\nsoftware: other\r\n") + b"\x1f\x8b"
    path.write_bytes(data)
    assert _repair_tail(str(path)) == len(data)
    assert path.read_bytes() == data
