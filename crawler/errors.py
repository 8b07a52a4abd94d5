"""The error tree. Every leaf of ``FetchError`` carries the contract's error kind.

    CrawlerError
    ├── UsageError            bad input file, bad option value -> exit 2
    └── FetchError            one URL failed; ``kind`` goes into its record
        ├── InvalidURL        invalid_url
        ├── DNSError          dns
        ├── ConnectError      connect       (refused, reset, unreachable)
        ├── TLSError          tls
        ├── Timeout           timeout       (the URL's deadline ran out)
        ├── AttemptTimeout    timeout       (one attempt timed out; retryable)
        ├── TooLarge          too_large
        ├── TooManyRedirects  too_many_redirects
        ├── ProtocolError     protocol      (malformed HTTP response)
        ├── HTTPStatusError   http          (final status >= 400)
        ├── CircuitOpen       circuit_open
        ├── Blocked           blocked       (--block-private refused the address)
        ├── ProxyError        proxy         (the proxy failed: refused, hung up, CONNECT
        │   │                                refused, SOCKS error; retryable)
        │   └── NoLiveProxy   proxy         (every proxy of the pool is benched)
        ├── RobotsDisallowed  robots        (robots.txt disallows it; crawl mode)
        ├── Cancelled         cancelled     (the run was interrupted)
        └── InternalError     internal      (a bug in crawler, not the server's doing)

Foreign exceptions (aiohttp, OSError, ssl) are translated in exactly one place,
``crawler.errormap.map_exception``; the record's kind comes from the class, never
from matching message strings. Only the network and HTTP errors known there get a
network kind: any other exception (``TypeError``, ``AttributeError``, ...) is a bug of
ours and becomes ``internal``, never ``protocol`` (which would blame the server and
count against its breaker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from crawler.records import safe_text

if TYPE_CHECKING:
    # What a crawler.response.Response offers a record (a protocol: the records need
    # no more of it).
    from crawler.records import Answer


class CrawlerError(Exception):
    """Root of every error this package raises on purpose."""


def storage_errors() -> tuple[type[BaseException], ...]:
    """What the run's files may raise: OSError, and sqlite3's errors (the --state, --etags
    and link-queue stores). Called where one is caught, so sqlite3 (3 ms to import) is
    loaded when something failed, not at every start."""
    import sqlite3

    return (OSError, sqlite3.Error)


class UsageError(CrawlerError):
    """The command line or its input cannot be used; exit status 2."""


class FetchError(CrawlerError):
    """One URL failed. Subclasses set ``kind`` and whether another attempt may help."""

    kind: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False
    proxy: str | None = None  # the proxy the attempt went through (no credentials)
    # False when the attempt failed before a byte of its request was sent (DNS, connect):
    # a request that is not idempotent may be tried again then (crawler.attempts).
    sent: bool = True

    def __init__(self, message: str, *, response: Answer | None = None) -> None:
        # Messages quote what servers sent (header values, reasons): make them valid UTF-8
        # here, once, so every record can be encoded.
        message = safe_text(message)
        super().__init__(message)
        self.message = message
        self.response = response  # what arrived before the failure, if anything


class InvalidURL(FetchError):  # noqa: N818 - named after the contract's kind
    kind = "invalid_url"


class DNSError(FetchError):
    kind = "dns"


class ConnectError(FetchError):
    kind = "connect"
    retryable = True


class TLSError(FetchError):
    kind = "tls"


class Timeout(FetchError):  # noqa: N818
    """The URL's deadline ran out: no time is left for another attempt."""

    kind = "timeout"


class AttemptTimeout(Timeout):
    """One attempt timed out (connect or read) while the URL's deadline still runs."""

    retryable = True


class TooLarge(FetchError):  # noqa: N818
    kind = "too_large"


class TooManyRedirects(FetchError):  # noqa: N818
    kind = "too_many_redirects"


class ProtocolError(FetchError):
    kind = "protocol"


class HTTPStatusError(FetchError):
    kind = "http"


class CircuitOpen(FetchError):  # noqa: N818
    kind = "circuit_open"


class Blocked(FetchError):  # noqa: N818
    """The address policy (``--block-private``) refused the destination address."""

    kind = "blocked"


class ProxyError(FetchError):
    """The proxy itself failed: it refused the connection, hung up or answered CONNECT
    with an error, or the SOCKS handshake failed. Another attempt may go through another
    proxy of the pool (this one's breaker counts it)."""

    kind = "proxy"
    retryable = True


class NoLiveProxy(ProxyError):  # noqa: N818 - like the other kinds
    """Every proxy the URL could go through is benched by its breaker."""

    retryable = False


class RobotsDisallowed(FetchError):  # noqa: N818
    kind = "robots"


class Cancelled(FetchError):  # noqa: N818
    kind = "cancelled"


class DeadLetter(FetchError):  # noqa: N818 - named after the contract's kind
    """A URL of a shared job (crawler.redisworker) delivered to workers too often without
    getting its record (each died or lost the job's shard while on it)."""

    kind = "dead_letter"


class HandBack(Exception):  # noqa: N818 - not an error: an instruction
    """Raised before an attempt by a fetcher that may no longer fetch the URL's host (a
    shared job's worker lost the host's shard): the URL gets no record, it is left for the
    shard's next owner (crawler.worker settles it like a durable run's unsent URL)."""


class InternalError(FetchError):
    """An exception crawler did not expect while fetching a URL: a bug. The URL gets an
    ``internal`` record and the run goes on; the fetcher prints the traceback once."""

    kind = "internal"
