"""Body files of ``--save-dir``: ``DIR/ab/<sha256>``, content-addressed (equal bodies are
stored once), written by a child process (crawler.offload) to a temporary name and renamed
into place, so a reader never sees half a file. The sink waits for the bodies before it
writes the records that name them; a checkpoint's ``sync`` puts them on disk with one
``syncfs``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import itertools
import os
import sys
from typing import Final

from crawler.offload import Offloaded, named

_HASH_INLINE_BYTES: Final = 256 * 1024


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class BodyStore(Offloaded):
    """``put`` hashes a body and returns (path, sha256) at once; the file is written by
    the child. The sink calls ``flush`` before writing records that name body files.
    ``start()`` raises OSError if the directory cannot be used."""

    def __init__(self, root: str) -> None:
        super().__init__("bodies", _BodyWriter, root)
        self._root = root

    async def put(self, body: bytes) -> tuple[str, str]:
        """Queue ``body``; returns (path, sha256 hex) at once (a big body is hashed in a
        thread: hashlib lets go of the GIL, and the loop goes on)."""
        if len(body) > _HASH_INLINE_BYTES:
            digest = await asyncio.get_running_loop().run_in_executor(None, _sha256, body)
        else:
            digest = _sha256(body)
        self._queue((digest, body), len(body))
        return os.path.join(self._root, digest[:2], digest), digest


# -- the child process ---------------------------------------------------------------------
class _BodyWriter:
    def __init__(self, root: str) -> None:
        self._root = root
        self._dirs: set[str] = set()
        self._seq = itertools.count()
        self._dirty = False  # files written since the last sync()
        self.written = 0

    def start(self) -> None:
        if os.path.exists(self._root) and not os.path.isdir(self._root):
            # makedirs would say "File exists", which is true but not the problem.
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", self._root)
        os.makedirs(self._root, exist_ok=True)
        probe = os.path.join(self._root, f".crawler-probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)

    def write(self, batch: list[tuple[str, bytes]]) -> None:
        for digest, body in batch:
            folder = os.path.join(self._root, digest[:2])
            path = os.path.join(folder, digest)
            try:
                if os.stat(path).st_size == len(body):
                    continue  # content-addressed: the same body is already there
            except FileNotFoundError:
                pass
            # (A file of another size is what a power cut can leave of a renamed file
            # whose data never reached the disk: written again.)
            if folder not in self._dirs:
                os.makedirs(folder, exist_ok=True)
                self._dirs.add(folder)
            tmp = f"{path}.{os.getpid()}-{next(self._seq)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:  # disk full: say which file (a write names none)
                raise named(exc, tmp) from None
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._dirty = True
            self.written += 1

    def sync(self) -> None:
        """The files (and their directory entries) written since the last sync, on disk:
        one syncfs() for all of them rather than an fsync per file and per directory."""
        if self._dirty:
            _sync_filesystem(self._root)
            self._dirty = False

    def close(self) -> int:
        return self.written


def _sync_filesystem(path: str) -> None:
    """syncfs(2) on the filesystem holding ``path`` (Linux); sync(2) elsewhere."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)  # our own process's libc
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
        finally:
            os.close(fd)
    else:
        os.sync()
