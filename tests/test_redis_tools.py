"""``crawler collect`` and ``crawler status`` against a real redis-server: jobs are made
and worked directly through ``crawler.redisjob`` (enqueue, lease, XREADGROUP, commit)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from crawler.redisjob import GROUP, Done, Job, Target, shard_of
from tests.conftest import marked_env, until
from tests.redisserver import fetch_job, redis_url  # noqa: F401

SHARDS = 4
ROOT = Path(__file__).resolve().parent.parent


def _target(i: int) -> Target:
    host = f"h{i % 7}.test"
    line = f"http://{host}/p/{i}"
    fp = int.from_bytes(hashlib.blake2b(line.encode(), digest_size=8).digest(), "little")
    return Target(fp=fp, shard=shard_of(host, SHARDS), line=line)


def _record(line: str) -> bytes:
    return orjson.dumps({"url": line, "ok": True, "pad": "x" * 40}) + b"\n"


@pytest.fixture
async def job(redis_url: str) -> AsyncIterator[Job]:  # noqa: F811
    async with fetch_job(redis_url, "j1", SHARDS) as made:
        yield made


async def _fill(job: Job, n: int) -> None:
    targets = [_target(i) for i in range(n)]
    for start in range(0, n, 1000):
        await job.enqueue(targets[start : start + 1000])


async def _work(job: Job, limit: int | None = None, commit: bool = True) -> int:
    """Read up to ``limit`` entries over the shards as worker w1, and commit them (or
    leave them pending); how many."""
    taken = 0
    for shard in range(SHARDS):
        token = await job.redis.get(job.key(f"lease:{shard}"))
        token = token.decode() if token else await job.acquire(shard, "w1", 60_000)
        assert token is not None
        while limit is None or taken < limit:
            count = 500 if limit is None else limit - taken
            reply = await job.redis.xreadgroup(GROUP, "w1", {job.stream(shard): ">"}, count=count)
            entries = reply[0][1] if reply else []
            if not entries:
                break
            taken += len(entries)
            if commit:
                done = [Done(e.decode(), _record(f[b"u"].decode()), ok=True) for e, f in entries]
                assert await job.commit(shard, token, done) == len(done)
    return taken


def _cli(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    env, _ = marked_env(dict(os.environ))
    return subprocess.Popen(
        [sys.executable, "-m", "crawler", *args],
        stdout=kw.pop("stdout", subprocess.PIPE),
        stderr=kw.pop("stderr", subprocess.PIPE),
        env=env,
        cwd=ROOT,
        **kw,
    )


def _run(*args: str) -> tuple[int, bytes, bytes]:
    proc = _cli(*args)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


async def _arun(*args: str) -> tuple[int, bytes, bytes]:
    return await asyncio.to_thread(_run, *args)


def _urls(data: bytes) -> list[str]:
    return [orjson.loads(line)["url"] for line in data.splitlines()]


async def test_collect_writes_each_record_once(job: Job, redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    await _fill(job, 300)
    assert await _work(job) == 300
    out = tmp_path / "out.jsonl"
    code, _, err = await _arun("collect", "--redis", redis_url, "--job", "j1", "-o", str(out))
    assert code == 0, err
    urls = _urls(out.read_bytes())
    assert sorted(urls) == sorted(_target(i).line for i in range(300))
    assert len(set(urls)) == 300
    assert await job.redis.xlen(job.key("out")) == 0  # trimmed once collected
    # Run again: the job is finished and drained; nothing is written twice.
    code, _, err = await _arun("collect", "--redis", redis_url, "--job", "j1", "-o", str(out))
    assert code == 0, err
    assert len(_urls(out.read_bytes())) == 300
    # To standard output: the records of a job as they are in the stream.
    await job.enqueue([_target(1000)])
    await _work(job)
    code, stdout, err = await _arun("collect", "--redis", redis_url, "--job", "j1")
    assert (code, _urls(stdout)) == (0, [_target(1000).line]), err


async def test_collect_killed_and_resumed(job: Job, redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    """SIGKILLed mid-way, with a torn tail, then run again into the same file: every
    record exactly once, whole lines only."""
    n = 600
    await _fill(job, n + 1)
    assert await _work(job, limit=n) == n  # one URL left: the job is not finished
    out = tmp_path / "out.jsonl"
    sidecar = tmp_path / "out.jsonl.collect"
    args = ("collect", "--redis", redis_url, "--job", "j1", "-o", str(out), "--batch", "7")
    proc = _cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await until(lambda: sidecar.exists() and orjson.loads(sidecar.read_bytes())["size"] > 0)
        proc.kill()
    finally:
        await asyncio.to_thread(proc.wait, 30)
    with out.open("ab") as f:
        f.write(b'{"url": "torn' + b"x" * 100_000)  # an unrecorded tail: a kill mid-write
    await _work(job)  # the last URL: the job finishes
    code, _, err = await _arun(*args)
    assert code == 0, err
    data = out.read_bytes()
    assert data.endswith(b"\n")
    urls = _urls(data)
    assert sorted(urls) == sorted(_target(i).line for i in range(n + 1))
    assert orjson.loads(sidecar.read_bytes())["size"] == len(data)


async def test_collect_interrupted_finishes_its_batch(
    job: Job,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    await _fill(job, 51)
    await _work(job, limit=50)
    out = tmp_path / "out.jsonl"
    sidecar = tmp_path / "out.jsonl.collect"
    proc = _cli("collect", "--redis", redis_url, "--job", "j1", "-o", str(out))
    try:
        await until(lambda: sidecar.exists() and orjson.loads(sidecar.read_bytes())["size"] > 0)
        # A second collect into the same file while this one writes it: refused.
        code, _, err = await _arun("collect", "--redis", redis_url, "--job", "j1", "-o", str(out))
        assert code == 2 and b"another crawler collect" in err, err
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, None, 30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert len(_urls(out.read_bytes())) == 50
    assert orjson.loads(sidecar.read_bytes())["size"] == out.stat().st_size


async def test_collect_refuses_a_file_not_its_own(
    job: Job,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    await _fill(job, 5)
    await _work(job)
    mine = tmp_path / "notes.txt"
    mine.write_bytes(b"my own notes\n")
    code, _, err = await _arun("collect", "--redis", redis_url, "--job", "j1", "-o", str(mine))
    assert code == 2
    assert err.startswith(b"crawler: error: ") and err.count(b"\n") == 1, err
    assert mine.read_bytes() == b"my own notes\n"
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"")
    (tmp_path / "other.jsonl.collect").write_bytes(b'{"job":"j2","size":0,"last":"0-0"}')
    code, _, err = await _arun("collect", "--redis", redis_url, "--job", "j1", "-o", str(other))
    assert code == 2 and b"j2" in err and err.count(b"\n") == 1, err
    assert await job.redis.xlen(job.key("out")) == 5  # nothing collected, nothing trimmed


async def test_status_json(job: Job, redis_url: str) -> None:  # noqa: F811
    await _fill(job, 40)
    await job.beat("workers", "w1", 60_000)
    assert await _work(job, limit=10) == 10  # done
    assert await _work(job, limit=6, commit=False) == 6  # pending: in flight
    code, out, err = await _arun("status", "--redis", redis_url, "--job", "j1", "--json")
    assert code == 0, err
    state = orjson.loads(out)
    want = {"mode": "fetch", "shards": SHARDS, "enqueued": 40, "done": 10, "failed": 0}
    assert {k: state[k] for k in want} == want
    assert (state["queued"], state["in_flight"], state["not_collected"]) == (24, 6, 10)
    assert state["finished"] is False
    [worker] = state["workers"]
    assert worker == {"id": "w1", "live": True, "shards": [0, 1, 2, 3], "in_flight": 6}
    assert state["memory"]["used_memory"] > 0 and state["memory"]["dedup"] > 0
    code, out, err = await _arun("status", "--redis", redis_url, "--job", "j1")
    assert code == 0, err
    assert b"finished: no\n" in out and b"in flight: 6\n" in out


async def test_bad_redis_or_missing_job_is_one_line(redis_url: str) -> None:  # noqa: F811
    cases = (
        ("collect", "http://127.0.0.1:1", "j1", b"invalid --redis"),
        ("status", "redis://127.0.0.1:1/0", "j1", b"cannot reach Redis"),
        ("collect", redis_url, "nope", b"no job 'nope'"),
        ("status", redis_url, "a b", b"invalid --job"),
    )
    results = await asyncio.gather(
        *(_arun(command, "--redis", url, "--job", job) for command, url, job, _ in cases)
    )
    for (command, url, _, says), (code, _, err) in zip(cases, results, strict=True):
        assert code == 2, (command, url, err)
        assert err.startswith(b"crawler: error: ") and err.count(b"\n") == 1, err
        assert says in err, err
