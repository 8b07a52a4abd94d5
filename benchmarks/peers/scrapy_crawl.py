"""Peer: Scrapy crawling a site by following every <a href> (its default dupefilter,
robots.txt off, no throttling, nothing stored). Runs in its own virtualenv.

    python scrapy_crawl.py http://127.0.0.1:PORT/site/0?size=5000 -c 100
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy_settings import settings


class SiteSpider(scrapy.Spider):
    name = "site"

    def __init__(self, start_url: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.start_url = start_url
        self.count = 0

    async def start(self) -> Any:  # Scrapy >= 2.13
        yield scrapy.Request(self.start_url, callback=self.parse)

    def start_requests(self) -> Any:  # older Scrapy
        yield scrapy.Request(self.start_url, callback=self.parse)

    def parse(self, response: Any) -> Any:
        self.count += 1
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, callback=self.parse)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("start_url")
    ap.add_argument("-c", type=int, default=100)
    a = ap.parse_args()
    process = CrawlerProcess(
        settings=settings(
            a.c,
            DEPTH_PRIORITY=1,  # breadth-first, like crawler
            SCHEDULER_DISK_QUEUE="scrapy.squeues.PickleFifoDiskQueue",
            SCHEDULER_MEMORY_QUEUE="scrapy.squeues.FifoMemoryQueue",
        )
    )
    crawler = process.create_crawler(SiteSpider)
    started = time.perf_counter()
    process.crawl(crawler, start_url=a.start_url)
    process.start()
    elapsed = time.perf_counter() - started
    print(json.dumps({"pages": crawler.spider.count, "seconds": elapsed}))
