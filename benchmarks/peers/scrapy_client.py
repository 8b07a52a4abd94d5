"""Peer: Scrapy's CrawlerProcess fetching a URL list; same concurrency, robots.txt off,
no throttling, nothing stored. Runs in its own virtualenv.

    python scrapy_client.py URLS.txt -c 100
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy_settings import settings


class ListSpider(scrapy.Spider):
    name = "list"

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.path = path
        self.count = 0

    def _requests(self) -> Any:
        with open(self.path) as f:
            for line in f:
                yield scrapy.Request(line.strip(), callback=self.parse, dont_filter=True)

    async def start(self) -> Any:  # Scrapy >= 2.13
        for request in self._requests():
            yield request

    def start_requests(self) -> Any:  # older Scrapy
        return self._requests()

    def parse(self, response: Any) -> None:
        self.count += 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("urls")
    ap.add_argument("-c", type=int, default=100)
    a = ap.parse_args()
    with open(a.urls) as f:
        n = sum(1 for _ in f)
    process = CrawlerProcess(settings=settings(a.c))
    crawler = process.create_crawler(ListSpider)
    started = time.perf_counter()
    process.crawl(crawler, path=a.urls)
    process.start()
    secs = time.perf_counter() - started
    stats = crawler.stats.get_stats() if crawler.stats else {}
    responses = stats.get("downloader/response_count", 0)
    print(json.dumps({"urls": n, "responses": responses, "urls_per_s": round(responses / secs, 1),
                      "errors": stats.get("downloader/exception_count", 0)}))  # fmt: skip
