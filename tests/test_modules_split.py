"""The seams between the fetch and storage modules that their users rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_storage_writer_modules_load_no_aiohttp() -> None:
    """A writer's child process imports its module: it shares the fetcher's plain data
    (crawler.response) but must not pay for aiohttp (nor for a copy of its constants)."""
    code = "import sys, crawler.bodies, crawler.warc; print('aiohttp' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"
