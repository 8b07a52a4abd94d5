"""Scrapy settings both Scrapy peers share: the same concurrency as crawler, robots.txt
off, no throttling, no retries, nothing but errors logged."""

from __future__ import annotations

from typing import Any


def settings(concurrency: int, **extra: Any) -> dict[str, Any]:
    return {
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
        "ROBOTSTXT_OBEY": False,
        "AUTOTHROTTLE_ENABLED": False,
        "DOWNLOAD_DELAY": 0,
        "LOG_LEVEL": "ERROR",
        "COOKIES_ENABLED": False,
        "RETRY_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "REACTOR_THREADPOOL_MAXSIZE": 4,
        **extra,
    }
