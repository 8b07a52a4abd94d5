"""A URL's unit of work (``Task``: plain values, serialisable) and what one process knows
about it while it runs (``Item``: its parsed URL, its host's slot, a monotonic deadline).

    Task --Item.from_task--> Item (reader: Item(...) directly) --item.task()--> Task

A task crosses processes as bytes (``to_bytes``/``from_bytes``); its deadline travels as
a wall-clock time, since monotonic clocks of two processes share no origin. Both
conversions take the clocks they use, so they are exact under fake clocks.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import orjson
from msgspec import Struct
from yarl import URL

from crawler.errors import InvalidURL
from crawler.request import Request, check_headers, check_method
from crawler.retry import Deadline
from crawler.urls import parse_target

if TYPE_CHECKING:
    from crawler.limiter import HostState

_FP_END: Final = 1 << 64  # fingerprints are 64-bit unsigned (crawler.dedup.fingerprint)


class Task(Struct, frozen=True):
    """One URL's work as it can leave the process: ``url`` is the input text; ``fp`` the
    fingerprint of its dedup key (0 without dedup); ``depth`` and ``parent`` its place in
    a crawl; ``attempts`` the requests made so far; ``expires`` the wall-clock time
    (``time.time()``) its deadline runs out, None before its first attempt; ``request``
    its method, own headers, body and meta (None: a plain line of a plain run)."""

    url: str
    fp: int = 0
    depth: int = 0
    parent: str | None = None
    attempts: int = 0
    expires: float | None = None
    request: Request | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError(f"task url must be a non-empty string, not {self.url!r}")
        _count("fp", self.fp)
        if self.fp >= _FP_END:
            raise ValueError(f"task fp must be below 2**64, not {self.fp!r}")
        _count("depth", self.depth)
        if self.parent is not None and not isinstance(self.parent, str):
            raise ValueError(f"task parent must be a string or null, not {self.parent!r}")
        _count("attempts", self.attempts)
        expires = self.expires
        if expires is not None and (
            not isinstance(expires, float | int)
            or isinstance(expires, bool)
            or not math.isfinite(expires)
        ):
            raise ValueError(f"task expires must be a finite number or null, not {expires!r}")
        if self.request is not None and not isinstance(self.request, Request):
            raise ValueError(f"task request must be a Request or null, not {self.request!r}")

    def to_bytes(self) -> bytes:
        """``[url, fp, depth, parent, attempts, expires]`` as JSON, and for a task with a
        request ``[method, {headers}, body (base64) or null, meta]`` after them."""
        fields: list[Any] = [
            self.url, self.fp, self.depth, self.parent, self.attempts, self.expires
        ]  # fmt: skip
        request = self.request
        if request is not None:
            body = request.body
            fields.append(
                [
                    request.method,
                    request.headers,
                    None if body is None else base64.b64encode(body).decode(),
                    request.meta,
                ]
            )
        return orjson.dumps(fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> Task:
        """The task ``to_bytes`` gave; ValueError, saying what is wrong, for anything else
        (a URL the reader would not queue included)."""
        try:
            fields: Any = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"task payload is not JSON: {exc}") from None
        if not isinstance(fields, list) or len(fields) not in (6, 7):
            raise ValueError(
                "task payload must be a list [url, fp, depth, parent, attempts, expires"
                f"(, request)], not {_short(fields)}"
            )
        if len(fields) == 7:
            fields[6] = _request_from(fields[6])
        task = cls(*fields)
        try:
            parse_target(task.url)
        except InvalidURL as exc:
            raise ValueError(f"task url {_short(task.url)}: {exc}") from None
        return task


def _request_from(value: object) -> Request:
    """The Request of a payload's ``[method, headers, body, meta]``; ValueError else."""
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(
            f"task request must be a list [method, headers, body, meta], not {_short(value)}"
        )
    method, headers, body, meta = value
    if not isinstance(method, str) or check_method(method) != method:
        raise ValueError(f"task request method {_short(method)} is not a method")
    if not isinstance(headers, list) or not all(
        isinstance(pair, list) and len(pair) == 2 for pair in headers
    ):
        raise ValueError(f"task request headers must be [name, value] pairs, not {_short(headers)}")
    pairs: list[tuple[str, str]] = []
    for name, text in headers:
        if not isinstance(name, str):
            raise ValueError(f"task request header name must be a string, not {_short(name)}")
        pairs.extend(check_headers({name: text}))  # as a request line's are checked
    if body is not None:
        if not isinstance(body, str):
            raise ValueError(f"task request body must be base64 or null, not {_short(body)}")
        try:
            body = base64.b64decode(body, validate=True)
        except binascii.Error:
            raise ValueError(f"task request body is not base64: {_short(body)}") from None
    return Request(method, tuple(pairs), body, meta)


def _count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"task {name} must be a non-negative integer, not {_short(value)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Item:
    """One URL on its way through this process's pipeline, with the state its retries
    share. Built per URL by the reader: the constructor stays plain assignments.

    ``request`` is a class attribute here, None: a plain line's item never stores it
    (no cost per URL). A request's item is a RequestItem, whose slot shadows it."""

    request: Request | None = None

    __slots__ = (
        "attempts",
        "checked",
        "deadline",
        "depth",
        "finished",
        "fp",
        "host",
        "host_key",
        "parent",
        "raw",
        "url",
    )

    def __init__(
        self,
        raw: str,
        url: URL,
        host_key: str,
        fp: int = 0,
        depth: int = 0,
        parent: str | None = None,
    ) -> None:
        self.raw = raw
        self.depth = depth  # crawl mode: links followed from a seed
        self.parent = parent
        self.fp = fp  # fingerprint of the dedup key (0 with --no-dedup)
        self.url = url
        self.host_key = host_key
        self.host: HostState | None = None  # set while the item holds a slot of its host
        self.attempts = 0
        self.deadline: Deadline | None = None  # starts with the first attempt
        self.finished = False  # its record is in the sink
        self.checked = False  # crawl mode: robots.txt allows it (see Frontier.checks_first)

    @classmethod
    def from_task(
        cls, task: Task, *, clock: Callable[[], float], wall: Callable[[], float]
    ) -> Item:
        """The item for ``task`` in this process: its URL parsed as the reader does (an
        invalid one raises crawler.errors.InvalidURL), its deadline, if started, on
        ``clock`` with the time ``wall`` says is left (none left: it has expired). The
        task holds no start time, so the record's ``elapsed_ms`` counts from here."""
        url, _, host_key = parse_target(task.url)
        if task.request is not None:
            item: Item = RequestItem(
                task.url, url, host_key, task.fp, task.request, task.depth, task.parent
            )
        else:
            item = cls(task.url, url, host_key, task.fp, task.depth, task.parent)
        item.attempts = task.attempts
        if task.expires is not None:
            item.deadline = Deadline(task.expires - wall(), clock)
        return item

    def task(self, *, clock: Callable[[], float], wall: Callable[[], float]) -> Task:
        """A snapshot of this URL's work (attempts so far, its deadline on ``wall``)."""
        deadline = self.deadline
        expires = None if deadline is None else deadline.expires - clock() + wall()
        return Task(
            self.raw, self.fp, self.depth, self.parent, self.attempts, expires, self.request
        )


class RequestItem(Item):
    """The item of a request with a method, headers or a body of its own (a JSON request
    line, or any line of a run with --data/--json/--method other than GET and HEAD)."""

    __slots__ = ("request",)

    def __init__(
        self,
        raw: str,
        url: URL,
        host_key: str,
        fp: int,
        request: Request,
        depth: int = 0,
        parent: str | None = None,
    ) -> None:
        super().__init__(raw, url, host_key, fp, depth, parent)
        self.request = request
