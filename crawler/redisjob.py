"""A job shared through Redis (``--redis URL --job NAME``): its keys, and the few atomic
steps every command of the distributed mode is made of.

    enqueue --lines--> [dedup bucket + XADD] --> q:<shard>  (one stream per host shard)
    worker  --lease(shard)--> XREADGROUP q:<shard> --> the pipeline
            --commit--> [lease check + XACK + XADD out + XDEL + links enqueued]
    collect <--XREAD-- out

Keys (all under ``crawler:{NAME}:``; the braces keep a job's keys in one Cluster slot):

    meta        hash: mode (fetch|crawl), shards, options (JSON), version
    n           hash: enqueued, done, failed, dead (dead-lettered), refused (stale commits)
    q:<s>       stream of shard s (group ``g``); entry: u=line, d=depth (crawl), p=parent
    d:<b>       dedup bucket: 64-bit fingerprints whose top 16 bits are b (an intset)
    lease:<s>   the owner's token ``worker:epoch`` with a TTL; epoch:<s> counts the owners
    workers     zset: worker id -> heartbeat deadline (Redis TIME, ms)
    feeders     zset: enqueue id -> heartbeat deadline (ms): while one lives, the job is open
    out         stream of records (r=encoded JSON line), read by ``crawler collect``
    seeds       list: a crawl's seeds (every worker's scope)

Why these shapes:
- A host belongs to one shard (``shard_of``), a shard to one worker at a time (its lease),
  so per-host politeness stays inside one process with no round trip per request.
- Entries are never popped destructively: a worker reads through the consumer group, so a
  worker that dies leaves its entries pending, and the next owner of the shard claims them.
- A commit is one script a batch: a shard's records are refused unless the caller's token
  is its lease's (fencing: a stale owner, paused past its TTL, cannot write), and only an
  entry still pending (``XACK`` returns 1) gets its record: fetched twice, written once.
- Dedup keeps 8 bytes a URL: a Redis set of integers stays an intset (8 bytes a member)
  while it holds at most ``set-max-intset-entries`` (512) members, so fingerprints go to
  65,536 buckets by their top bits: up to ~2*10^7 URLs a job stay intset-encoded.

The scripts compute their keys from the job's prefix, so a job lives on one Redis server
(or one Cluster slot), as the braces say.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson
from msgspec import Struct

from crawler import __version__
from crawler.errors import UsageError

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_SHARDS: Final = 256
DEFAULT_LEASE_MS: Final = 10_000
GROUP: Final = "g"
BUCKET_SHIFT: Final = 48  # a fingerprint's top 16 bits name its dedup bucket
MODES: Final = ("fetch", "crawl")


class JobError(UsageError):
    """A job that cannot be used as asked: one line, exit 2 (in a worker's run too)."""


_JOB_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


def check_name(job: str) -> str:
    """A job name: letters, digits, ``_ . : -`` (it is part of every key)."""
    if not _JOB_NAME.fullmatch(job):
        raise JobError(f"invalid --job {job!r}: use letters, digits, '_', '.', ':' or '-'")
    return job


async def connect(url: str, *, block_ms: int = 0) -> Redis:
    """A client for ``url`` (redis://, rediss://, unix://), checked with a PING. Its
    socket timeout is longer than the longest blocking read it will make (redis-py #3138:
    a timeout shorter than XREADGROUP's BLOCK breaks the connection). Any failure is one
    JobError naming the server without its password."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    shown = _without_password(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise JobError(f"invalid --redis {shown!r}: expected redis://HOST[:PORT][/DB]")
    try:
        client = Redis.from_url(
            url,
            socket_timeout=block_ms / 1000 + 10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
    except ValueError as exc:
        why = _without_password(url, str(exc))
        raise JobError(f"invalid --redis {shown!r}: {why}") from None
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        why = _without_password(url, str(exc))
        raise JobError(f"cannot reach Redis at {shown}: {why}") from None
    return client


def _without_password(url: str, text: str | None = None) -> str:
    """``text`` (or ``url``) without ``url``'s password: all between ``//`` and the last
    ``@`` (it may hold ``/`` or ``@``), and a query's ``password=``."""
    base, _, query = url.partition("?")
    _, slashes, rest = base.partition("//")
    secrets = [rest.rpartition("@")[0]] if slashes and "@" in rest else []
    secrets += re.findall(r"(?:^|&)password=([^&]*)", query)
    secrets += [part for secret in secrets for part in re.split("[:/@]", secret) if len(part) > 2]
    shown = url if text is None else text
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        shown = shown.replace(secret, "***")
    return shown


def prefix(job: str) -> str:
    return f"crawler:{{{job}}}:"


def shard_of(host: str, shards: int) -> int:
    """The shard of a host: stable across processes and machines (not Python's hash)."""
    digest = hashlib.blake2b(host.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def signed(fp: int) -> int:
    """A 64-bit fingerprint as Redis stores an integer (signed)."""
    return fp - (1 << 64) if fp >= 1 << 63 else fp


def bucket_of(fp: int) -> int:
    return fp >> BUCKET_SHIFT


def worker_id() -> str:
    """A name unique to this process on any machine: host, pid and 32 random bits."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"


def rendezvous(shard: int, workers: Sequence[str]) -> str | None:
    """The live worker that should own ``shard`` (highest random weight): when a worker
    joins or leaves, only the shards it wins or held change hands."""
    best: tuple[bytes, str] | None = None
    for worker in workers:
        weight = _weight(shard, worker)
        if best is None or weight > best[0]:
            best = (weight, worker)
    return None if best is None else best[1]


def assign(shards: int, workers: Sequence[str]) -> dict[int, str]:
    """Who should own each shard: rendezvous hashing with bounded load. Each (shard,
    worker) pair has a random weight; taken from the heaviest down, a shard goes to its
    first worker that has fewer than ceil(shards / workers) shards. Every worker computes
    the same map from the same live list; a join or a leave moves few shards, and no
    worker gets more than its share (plain rendezvous hashing gives 4 workers 64 +/- 7 of
    256 shards each: the busiest sets the pace of a job).
    """
    if not workers:
        return {}
    cap = -(-shards // len(workers))
    pairs = sorted(
        ((_weight(shard, worker), shard, worker) for shard in range(shards) for worker in workers),
        reverse=True,
    )
    owner: dict[int, str] = {}
    load = dict.fromkeys(workers, 0)
    for _, shard, worker in pairs:
        if shard not in owner and load[worker] < cap:
            owner[shard] = worker
            load[worker] += 1
    return owner


def _weight(shard: int, worker: str) -> bytes:
    return hashlib.blake2b(f"{shard}\0{worker}".encode(), digest_size=8).digest()


# -- scripts ---------------------------------------------------------------------------------
# ARGV[1] = the job's prefix, then one (fingerprint, bucket, shard, line, depth, parent) per
# URL. A URL already in its bucket is not added again.
_ENQUEUE: Final = """
local p = ARGV[1]
local added = 0
local room = _room(p)
for i = 2, #ARGV, 6 do
  if added < room and redis.call('SADD', p .. 'd:' .. ARGV[i + 1], ARGV[i]) == 1 then
    local q = p .. 'q:' .. ARGV[i + 2]
    if ARGV[i + 4] == '' then
      redis.call('XADD', q, '*', 'u', ARGV[i + 3])
    else
      redis.call('XADD', q, '*', 'u', ARGV[i + 3], 'd', ARGV[i + 4], 'p', ARGV[i + 5])
    end
    added = added + 1
  end
end
if added > 0 then redis.call('HINCRBY', p .. 'n', 'enqueued', added) end
return added
"""

# Make a job, atomically: KEYS meta; ARGV prefix, mode, shards, options, version,
# budget (a crawl's --max-pages, or ''). 0 if it exists (its settings stay as they are).
_CREATE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for s = 0, tonumber(ARGV[3]) - 1 do
  redis.call('XGROUP', 'CREATE', ARGV[1] .. 'q:' .. s, 'g', '0', 'MKSTREAM')
end
redis.call('HSET', KEYS[1], 'mode', ARGV[2], 'shards', ARGV[3], 'options', ARGV[4],
  'version', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'budget', ARGV[6]) end
return 1
"""

# How many more URLs the job may take: a crawl's --max-pages (meta budget) less those
# enqueued so far, or (no budget) as many as are given.
_ROOM: Final = """
local function _room(p)
  local budget = redis.call('HGET', p .. 'meta', 'budget')
  if not budget then return math.huge end
  return tonumber(budget) - tonumber(redis.call('HGET', p .. 'n', 'enqueued') or '0')
end
"""

# Take a shard: KEYS lease, epoch; ARGV worker, ttl ms. The token, or false if owned.
_ACQUIRE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

# Give a shard back: KEYS lease; ARGV token.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Commit a batch over any shards: KEYS their leases; ARGV prefix, then per shard: token,
# shard, E entries, E x (id, record, ok (1|0|d: dead-lettered), L links, L x (fingerprint,
# bucket, shard, line, depth, parent)). A shard whose lease is not the token's has nothing
# written (refused +1). Per shard: -1 (refused) or the number of records written.
_COMMIT: Final = """
local p = ARGV[1]
local out, room = p .. 'out', _room(p)
local written, failed, dead, added, refused = 0, 0, 0, 0, 0
local answers, i = {}, 2
for k = 1, #KEYS do
  local ours, q = redis.call('GET', KEYS[k]) == ARGV[i], p .. 'q:' .. ARGV[i + 1]
  local n, entries = 0, tonumber(ARGV[i + 2])
  i = i + 3
  for e = 1, entries do
    local id, record, ok, nlinks = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    i = i + 4
    local fresh = ours and redis.call('XACK', q, 'g', id) == 1
    if fresh then
      redis.call('XADD', out, '*', 'r', record)
      redis.call('XDEL', q, id)
      n = n + 1
      if ok == 'd' then dead = dead + 1 else written = written + 1 end
      if ok ~= '1' then failed = failed + 1 end
    end
    for j = 1, nlinks do
      if fresh and added < room and redis.call('SADD', p .. 'd:' .. ARGV[i + 1], ARGV[i]) == 1
      then
        local lq = p .. 'q:' .. ARGV[i + 2]
        redis.call('XADD', lq, '*', 'u', ARGV[i + 3], 'd', ARGV[i + 4], 'p', ARGV[i + 5])
        added = added + 1
      end
      i = i + 6
    end
  end
  if ours then answers[k] = n else answers[k] = -1; refused = refused + 1 end
end
local n = p .. 'n'
if written > 0 then redis.call('HINCRBY', n, 'done', written) end
if failed > 0 then redis.call('HINCRBY', n, 'failed', failed) end
if dead > 0 then redis.call('HINCRBY', n, 'dead', dead) end
if added > 0 then redis.call('HINCRBY', n, 'enqueued', added) end
if refused > 0 then redis.call('HINCRBY', n, 'refused', refused) end
return answers
"""

# Heartbeat of a worker or feeder: KEYS zset; ARGV id, ttl ms. Drops the expired ones
# and returns the live ids.
_BEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] ~= '0' then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else redis.call('ZREM', KEYS[1], ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class Target(Struct, frozen=True):
    """One URL to enqueue: its fingerprint (as ``crawler.dedup.fingerprint`` of its key),
    its host's shard, the input line, and in a crawl its depth and parent page."""

    fp: int
    shard: int
    line: str
    depth: int | None = None
    parent: str | None = None

    def args(self) -> list[Any]:
        fp = signed(self.fp)
        depth = "" if self.depth is None else self.depth
        return [fp, bucket_of(self.fp), self.shard, self.line, depth, self.parent or ""]


class Done(Struct, frozen=True):
    """One committed URL: its stream entry, its encoded record, whether it is ok, and in a
    crawl the links its page gave (enqueued with it, atomically)."""

    entry: str
    record: bytes
    ok: bool
    links: Sequence[Target] = ()
    dead: bool = False  # delivered too often without a record: dead-lettered


class Job:
    """One job on one Redis server: the keys above and the scripts that change them."""

    def __init__(self, redis: Redis, name: str) -> None:
        self.redis = redis
        self.name = name
        self.prefix = prefix(name)
        self.mode = "fetch"
        self.shards = DEFAULT_SHARDS
        self.options: dict[str, Any] = {}
        self._create = redis.register_script(_CREATE)
        self._enqueue = redis.register_script(_ROOM + _ENQUEUE)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._commit = redis.register_script(_ROOM + _COMMIT)
        self._beat = redis.register_script(_BEAT)

    def key(self, name: str) -> str:
        return self.prefix + name

    def stream(self, shard: int) -> str:
        return f"{self.prefix}q:{shard}"

    # -- the job itself ------------------------------------------------------------------
    async def create(
        self, mode: str, options: dict[str, Any], shards: int = DEFAULT_SHARDS
    ) -> bool:
        """Make the job if it does not exist (True), or check that the one there is of the
        same mode (False); its options are those it was made with."""
        if mode not in MODES:
            raise JobError(f"unknown job mode {mode!r}")
        options_json = orjson.dumps(options)
        budget = options.get("crawl", {}).get("max_pages") if mode == "crawl" else None
        args = [self.prefix, mode, shards, options_json, __version__, budget or ""]
        made = await self._create(keys=[self.key("meta")], args=args)
        await self.open(mode)
        return bool(made)

    async def open(self, mode: str | None = None) -> None:
        """Read the job's settings; a missing job, or one of another mode, is a JobError."""
        meta: dict[bytes, bytes] = await self.redis.hgetall(self.key("meta"))  # type: ignore[assignment]
        if not meta or b"shards" not in meta:
            raise JobError(f"no job {self.name!r} on this Redis server")
        self.mode = meta[b"mode"].decode()
        if mode is not None and mode != self.mode:
            raise JobError(f"job {self.name!r} is a {self.mode} job, not a {mode} job")
        self.shards = int(meta[b"shards"])
        self.options = orjson.loads(meta.get(b"options", b"{}"))

    async def seeds(self) -> list[str]:
        """A crawl's seeds (its scope)."""
        raw: list[Any] = await self.redis.lrange(self.key("seeds"), 0, -1)
        return [bytes(seed).decode("utf-8", "surrogateescape") for seed in raw]

    async def counts(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.key("n"))  # type: ignore[assignment]
        counts = {"enqueued": 0, "done": 0, "failed": 0, "dead": 0, "refused": 0}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        return counts

    async def finished(self) -> bool:
        """Nothing queued or pending (every URL enqueued has its record or was
        dead-lettered) and no enqueue still feeding the job. A job no longer there (Redis
        restarted empty, its keys deleted) is a JobError, not finished (zero counts)."""
        pipe: Any = self.redis.pipeline(transaction=True)
        there, raw = await pipe.exists(self.key("meta")).hgetall(self.key("n")).execute()
        if not there:
            raise self.gone()
        counts = {"enqueued": 0, "done": 0, "dead": 0}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        if counts["done"] + counts["dead"] < counts["enqueued"]:
            return False
        return not await self.live("feeders")

    def gone(self) -> JobError:
        return JobError(f"job {self.name!r} is no longer on this Redis server (restarted empty?)")

    # -- enqueue -------------------------------------------------------------------------
    async def enqueue(self, targets: Iterable[Target]) -> int:
        """Add the URLs not seen before to their shards' streams, atomically per batch;
        how many were new."""
        args: list[Any] = [self.prefix]
        for target in targets:
            args.extend(target.args())
        if len(args) == 1:
            return 0
        return int(await self._enqueue(args=args))

    # -- leases --------------------------------------------------------------------------
    async def acquire(self, shard: int, worker: str, ttl_ms: int) -> str | None:
        keys = [self.key(f"lease:{shard}"), self.key(f"epoch:{shard}")]
        token = await self._acquire(keys=keys, args=[worker, ttl_ms])
        return None if token is None else token.decode()

    async def release(self, shard: int, token: str) -> None:
        await self._release(keys=[self.key(f"lease:{shard}")], args=[token])

    async def beat(self, zset: str, member: str, ttl_ms: int) -> list[str]:
        """Say ``member`` lives for ``ttl_ms`` more (0: it left); the live members."""
        live = await self._beat(keys=[self.key(zset)], args=[member, ttl_ms])
        return [m.decode() for m in live]

    async def live(self, zset: str) -> list[str]:
        return await self.beat(zset, "", 0)

    # -- commit --------------------------------------------------------------------------
    async def commit(self, shard: int, token: str, done: Sequence[Done]) -> int:
        """Write ``done``'s records (and enqueue their links) if ``shard``'s lease is
        still ``token``'s: the number written, or -1 if refused."""
        return (await self.commit_all([(shard, token, done)]))[0]

    async def commit_all(self, batch: Sequence[tuple[int, str, Sequence[Done]]]) -> list[int]:
        """``commit`` of each (shard, token, done) in one script call, each shard fenced by
        its own lease (a stale token refuses its shard's records only); per shard, in order."""
        keys = [self.key(f"lease:{shard}") for shard, _, _ in batch]
        args: list[Any] = [self.prefix]
        for shard, token, done in batch:
            args += (token, shard, len(done))
            for item in done:
                ok = "d" if item.dead else 1 if item.ok else 0
                args += (item.entry, item.record, ok, len(item.links))
                args += (arg for link in item.links for arg in link.args())
        return [int(n) for n in await self._commit(keys=keys, args=args)]
