"""Redis memory of a job's dedup buckets at 10^6 to 10^7 URLs (issue 17's "about 9 bytes
per URL"), without the cost of making that many URLs in Python.

    python benchmarks/redis_dedup_scale.py [--millions 10]

Starts its own redis-server (no persistence, a temp dir, a free port). A Lua script adds
random 63-bit integers to the job's 65,536 buckets (``crawler:{j}:d:<b>``, b drawn at
random as a fingerprint's top 16 bits are), 10^5 per call, as ``Job.enqueue``'s SADD
does; at 1, 5 and every further 5 million it prints used_memory over the members, the
encodings of a sample of buckets (intset: 8 bytes a member) and the largest bucket of a
sample (intset up to set-max-intset-entries, 512).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_cost import start_redis

_FILL = """
math.randomseed(tonumber(ARGV[2]))
local n = 0
for i = 1, tonumber(ARGV[1]) do
  local b = math.random(0, 65535)
  local m = tostring(math.random(1, 900000000)) .. string.format('%09d', math.random(0, 999999999))
  n = n + redis.call('SADD', 'crawler:{j}:d:' .. b, m)
end
return n
"""


def main() -> None:
    import redis

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--millions", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            r = redis.Redis.from_url(url)
            base = r.info("memory")["used_memory"]
            fill = r.register_script(_FILL)
            total = 0
            print("members      B/URL   MiB    sampled encodings   largest sampled bucket")
            for step in range(args.millions * 10):
                total += fill(args=[100_000, step + 1])
                if (step + 1) % 10 == 0 and ((step + 1) // 10 in (1,) or (step + 1) % 50 == 0):
                    used = r.info("memory")["used_memory"] - base
                    keys = [f"crawler:{{j}}:d:{b}" for b in range(0, 65536, 257)]
                    encodings = sorted({r.object("encoding", k).decode() for k in keys})
                    largest = max(r.scard(k) for k in keys)
                    print(
                        f"{total:>10,} {used / total:7.2f} {used / 2**20:7.1f}    "
                        f"{','.join(encodings):18}  {largest}"
                    )
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
