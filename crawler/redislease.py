"""A worker's shard leases (``crawler worker``; keys in crawler.redisjob), and the gate
that keeps its requests inside them.

    Leases.run: every TTL/3, one heartbeat (the live workers), then ONE script call that
        renews, releases and acquires every shard of this beat (redisjob.assign says which
        shards this worker should hold: an equal share each); sooner while a shard it
        wants is held by another worker, right as that lease lapses
    GatedFetcher: an attempt at a host whose shard lease is not valid on this process's
        clock is not sent (HandBack); one that is in flight when the lease's deadline
        passes (or the lease is lost) is cancelled and handed back too

A lease's deadline on this process's monotonic clock is the start of the call that took
or renewed it + TTL - a margin (TTL/5): Redis expires the key no earlier than TTL after
the call reached it, so this worker stops a shard's hosts before a new owner can start
on them, and per-host politeness holds across an ownership change. One timer per worker
(not per URL, not per shard) watches the earliest deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from crawler.errors import HandBack
from crawler.redisjob import Job, assign, shard_of
from crawler.urls import host_key

if TYPE_CHECKING:
    from yarl import URL

    from crawler.fetcher import Fetcher


_HOSTS_REMEMBERED: Final = 65_536  # the gate's host -> shard cache, at most
_LAPSED: Final = 0.05  # seconds after a wanted lease's PTTL before the beat that takes it
# Seconds each goodbye to Redis may take as a worker ends (its last commits, giving the
# shards back): else a Redis that hangs holds the exit for the client's socket timeouts
# (crawler.redisjob.connect: 5 s to connect, over 10 s to read) at each step.
GOODBYE: Final = 1.0


def redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled and still runs. On Python 3.11,
    ``asyncio.wait_for`` returns its inner result instead of raising when the cancel comes
    as the inner future finishes (CPython gh-86296; 3.12 rewrote it), and redis-py sends
    every command through it: a cancel that met a send was lost, and a loop of Redis calls
    (the reader, the heartbeat) ran on after its task was cancelled, so a stopped worker
    never exited. Nothing on those tasks uncancels: a request still counted means stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def check_job(job: Job) -> None:
    """After a failed step: a JobError if Redis answers and the job is gone (a missing
    stream fails every time: trying again would spin); nothing if Redis does not answer
    (it may come back)."""
    try:
        there = await job.redis.exists(job.key("meta"))
    except redis_errors():
        return
    if not there:
        raise job.gone()


# Leases of one beat: ARGV prefix, worker, ttl ms, then per shard (op, shard, token): op
# a (acquire: the new token, or '' if owned), r (renew: '1' if still ours, else ''),
# x (release: the lease is left to lapse in TTL/5, the same margin as a lease that runs
# out, so a new owner's first request to a host never follows this worker's last one by
# less than that). One answer per shard, in order.
_LEASES: Final = """
local p, me, ttl = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 3 do
  local op, s, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local lease = p .. 'lease:' .. s
  local r = ''
  if op == 'a' then
    if redis.call('EXISTS', lease) == 0 then
      r = me .. ':' .. redis.call('INCR', p .. 'epoch:' .. s)
      redis.call('SET', lease, r, 'PX', ttl)
    end
  elseif redis.call('GET', lease) == token then
    if op == 'r' then
      redis.call('PEXPIRE', lease, ttl)
      r = '1'
    else
      redis.call('PEXPIRE', lease, math.max(1, math.floor(tonumber(ttl) / 5)))
    end
  end
  out[#out + 1] = r
end
return out
"""


class Leases:
    """The shards this worker holds (token and deadline each), renewed by ``run()``."""

    def __init__(self, job: Job, me: str, ttl: float) -> None:
        self.job = job
        self.me = me
        self.ttl = ttl
        self.margin = ttl / 5
        self.held: dict[int, tuple[str, float]] = {}  # shard -> (token, deadline)
        self.wanted: set[int] = set()  # the shards assign() gives this worker now
        self.outstanding: defaultdict[int, int] = defaultdict(int)  # entries being done
        self.claims: list[int] = []  # shards acquired whose old pending entries to take
        self.changed = asyncio.Event()
        self.stopping = False
        # Requests in flight per shard (worker tasks), cut when its lease lapses.
        self.inflight: defaultdict[int, set[asyncio.Task[Any]]] = defaultdict(set)
        self.cut: set[asyncio.Task[Any]] = set()
        self._script = job.redis.register_script(_LEASES)
        self._live: tuple[str, ...] = ()
        self._owner: dict[int, str] = {}
        self._watch: asyncio.TimerHandle | None = None
        self.goodbye = GOODBYE  # the bound of leave(), and of the sink's last commits

    def valid(self, shard: int) -> bool:
        held = self.held.get(shard)
        return held is not None and time.monotonic() < held[1]

    def token(self, shard: int) -> str | None:
        held = self.held.get(shard)
        return None if held is None else held[0]

    def readable(self) -> list[int]:
        """The shards to read new entries from: held, valid and still wanted."""
        now = time.monotonic()
        wanted = self.wanted
        return [s for s, (_, end) in self.held.items() if now < end and s in wanted]

    async def beat(self) -> None:
        job, me, ttl_ms = self.job, self.me, int(self.ttl * 1000)
        live = await job.beat("workers", me, 0 if self.stopping else ttl_ms)
        if not self.stopping and me not in live:
            live.append(me)
        key = tuple(sorted(live))
        if key != self._live:
            self._live, self._owner = key, assign(job.shards, key)
        owner = self._owner
        wanted = set() if self.stopping else {s for s, w in owner.items() if w == me}
        self.wanted = wanted
        ops: list[tuple[str, int, str]] = []
        for shard, (token, _) in self.held.items():
            keep = shard in wanted or self.outstanding[shard] > 0
            ops.append(("r" if keep else "x", shard, token))
        ops += [("a", shard, "") for shard in wanted if shard not in self.held]
        if not ops:
            return
        started = time.monotonic()
        args: list[Any] = [job.prefix, me, ttl_ms]
        for each in ops:
            args.extend(each)
        answers = await self._script(args=args)
        deadline = started + self.ttl - self.margin
        lost = False
        for (op, shard, token), answer in zip(ops, answers, strict=True):
            got: str = answer.decode()
            if op == "a":
                if got:
                    self.held[shard] = (got, deadline)
                    self.claims.append(shard)
                    self.changed.set()
            elif op == "r" and got and self.token(shard) == token:
                self.held[shard] = (token, deadline)
            else:
                self.held.pop(shard, None)  # released, or lost: the gate hands it back
                lost = True
        if lost:
            self._expire()
        self._schedule()

    def _schedule(self) -> None:
        """One timer at the earliest deadline of a held shard."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.held:
            loop = asyncio.get_running_loop()
            first = min(end for _, end in self.held.values())
            delay = max(0.0, first - time.monotonic())
            self._watch = loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        self._watch = None
        self._expire()
        now = time.monotonic()
        if any(end > now for _, end in self.held.values()):
            self._schedule()

    def _expire(self) -> None:
        """Cut the requests in flight on shards no longer valid (handed back)."""
        for shard, tasks in self.inflight.items():
            if tasks and not self.valid(shard):
                for task in tasks:
                    if task not in self.cut:
                        self.cut.add(task)
                        task.cancel()

    async def pause(self) -> float:
        """Seconds to the next beat: TTL/3, or less when a shard this worker wants is
        held by no one or lapses sooner (a previous owner gave it back, or died): the
        next beat comes as it lapses, not up to TTL/3 later (a joining worker waited
        that long, idle, for shards already free). Its owner's renewals keep a lease's
        time left above TTL/3."""
        beat = self.ttl / 3
        missing = [s for s in self.wanted if s not in self.held]
        if not missing or self.stopping:
            return beat
        pipe = self.job.redis.pipeline(transaction=False)
        for shard in missing:
            pipe.pttl(self.job.key(f"lease:{shard}"))
        left: list[int] = await pipe.execute()
        # PTTL -2: no lease (free now); -1: a lease with no TTL (not one of ours).
        soonest = min(ms / 1000 if ms >= 0 else 0.0 if ms == -2 else beat for ms in left)
        return min(beat, soonest + _LAPSED)

    async def run(self) -> None:
        away = False  # the last beat failed: said once on stderr, and once when it is back
        while True:
            pause = self.ttl / 3
            try:
                await self.beat()
                pause = await self.pause()
            except redis_errors() as exc:
                if not away:
                    away = True
                    _say(
                        f"Redis does not answer ({exc}): trying again; no URL is fetched "
                        "once this worker's leases run out"
                    )
            else:
                if away:
                    away = False
                    _say("Redis answers again")
            stop_if_cancelled()  # a cancel lost in a Redis call: see there
            await asyncio.sleep(pause)

    async def leave(self) -> None:
        """Give every shard back and leave the live workers, or give up after
        ``goodbye`` seconds: a courtesy, so another worker can take the shards at once;
        if Redis does not answer, they lapse on their TTL (and this worker's heartbeat
        with them) and the stop does not wait for it."""
        if self._watch is not None:
            self._watch.cancel()
        self.stopping = True
        self.outstanding.clear()
        with contextlib.suppress(*redis_errors()):  # TimeoutError (the bound) too
            async with asyncio.timeout(self.goodbye):
                await self.beat()
        self.held.clear()


def _say(message: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"crawler worker: {message}\n")
        sys.stderr.flush()


class GatedFetcher:
    """The run's fetcher behind the leases: an attempt at a host whose shard lease is not
    valid now is not sent, and one in flight when it lapses is cancelled (HandBack)."""

    def __init__(self, inner: Fetcher, leases: Leases) -> None:
        self._inner = inner
        self._leases = leases
        self._shards: dict[str, int] = {}

    def fetch(
        self,
        url: URL,
        budget: float,
        keep: int,
        follow: Callable[[URL], bool] | None,
        credentials: bool,
        request: Any,
    ) -> Any:
        key = host_key(url)
        shard = self._shards.get(key)
        if shard is None:
            if len(self._shards) >= _HOSTS_REMEMBERED:  # a long run's hosts: start again
                self._shards.clear()
            shard = self._shards[key] = shard_of(key, self._leases.job.shards)
        if not self._leases.valid(shard):
            raise HandBack(key)
        pending = self._inner.fetch(url, budget, keep, follow, credentials, request)
        return self._guarded(shard, key, pending)

    async def _guarded(self, shard: int, key: str, pending: Any) -> Any:
        leases = self._leases
        task = asyncio.current_task()
        assert task is not None  # noqa: S101
        tasks = leases.inflight[shard]
        tasks.add(task)
        try:
            return await pending
        except asyncio.CancelledError:
            if task in leases.cut and task.cancelling() <= 1:
                task.uncancel()
                raise HandBack(key) from None
            raise
        finally:
            tasks.discard(task)
            leases.cut.discard(task)
