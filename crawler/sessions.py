"""State a run's requests carry from one response to the next: the cookie jar (--cookies,
--cookie-jar in Netscape cookies.txt format, as curl -b/-c) and the stored validators of
revisits (--etags: If-None-Match / If-Modified-Since, a 304 recorded as not_modified).

Only a run that asks for one of them gets a ``SessionState`` (opened before the first
request, saved after the last) and ``SessionFetcher``s sharing it (one per proxy, with
proxies); every other run keeps the plain Fetcher and its hot path untouched (decided
once, in ``make_fetcher``). The files are checked before the run
(``check_session_files``): a file that is not ours is refused, never overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from http.cookies import CookieError, Morsel
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp.client_reqrep import ClientResponse
from multidict import CIMultiDict
from yarl import URL

from crawler.config import FetchConfig
from crawler.errors import UsageError, storage_errors
from crawler.fetcher import Fetcher
from crawler.paths import a_leftover, not_a_file, write_now
from crawler.records import Record, Records
from crawler.response import Response
from crawler.session import tls_context

if TYPE_CHECKING:
    import sqlite3

# SQLite's application_id (header bytes 68-71) of an --etags file: "CRE1".
ETAGS_APPLICATION_ID: Final = 0x43524531
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_ETAGS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS validators"
    " (url TEXT PRIMARY KEY, etag TEXT, last_modified TEXT) WITHOUT ROWID"
)
# The first line of a cookies.txt, as http.cookiejar.MozillaCookieJar reads it.
_NETSCAPE_MAGIC: Final = re.compile(rb"#( Netscape)? HTTP Cookie File")
_WRITE_BATCH: Final = 256  # validators written per transaction, off the event loop
_CONDITIONAL_METHODS: Final = frozenset(("GET", "HEAD"))


def make_fetcher(
    session: aiohttp.ClientSession,
    config: FetchConfig,
    state: SessionState | None,
    **options: Any,
) -> Fetcher:
    """A fetcher of the run: a SessionFetcher only if the run keeps cookies or validators
    (``state``, from ``session_state``). ``options``: the Fetcher's own (a proxy's)."""
    if state is not None:
        return SessionFetcher(session, config, state, **options)
    return Fetcher(session, config, **options)


def session_state(config: FetchConfig) -> SessionState | None:
    """The run's jar and revisit store, if it keeps either (not yet open)."""
    return SessionState(config) if config.session_state else None


class SessionState:
    """The run's cookie jar and stored validators, shared by all its fetchers: loaded
    (and the files checked) by ``open``, saved by ``aclose``."""

    def __init__(self, config: FetchConfig) -> None:
        self._config = config
        # unsafe: cookies of hosts named by their IP address are kept too, as curl does.
        self.jar = aiohttp.CookieJar(unsafe=True) if config.cookies else None
        self.store = EtagStore(config.etags) if config.etags is not None else None

    async def open(self) -> None:
        config = self._config
        check_session_files(config)
        if self.jar is not None and config.cookie_jar is not None:
            await asyncio.to_thread(load_jar, self.jar, config.cookie_jar)
        if self.store is not None:
            try:
                await self.store.open()
            except storage_errors() as exc:
                raise UsageError(f"cannot use --etags {config.etags!r}: {exc}") from None

    async def aclose(self) -> None:
        config = self._config
        try:
            if self.store is not None:
                await self.store.aclose()
        finally:
            if self.jar is not None and config.cookie_jar is not None:
                try:
                    await asyncio.to_thread(save_jar, self.jar, config.cookie_jar)
                except OSError as exc:
                    raise UsageError(
                        f"cannot write --cookie-jar {config.cookie_jar!r}: {exc.strerror}"
                    ) from None


def check_session_files(config: FetchConfig) -> None:
    """Before the run: the TLS files can be used, and --cookie-jar and --etags are absent,
    empty, or files of their kind (never a file of the user's we would overwrite).
    Each problem is a UsageError naming the file."""
    tls_context(config, lazy=True)  # the files are read now; the system's store is not
    if config.cookie_jar is not None and _has_content(config.cookie_jar, "--cookie-jar"):
        with open(config.cookie_jar, "rb") as file:
            first = file.readline(200)
        if not _NETSCAPE_MAGIC.match(first):
            raise UsageError(
                f"--cookie-jar {config.cookie_jar!r} is not a Netscape cookies file (its first "
                "line is not '# Netscape HTTP Cookie File'): refusing to overwrite it"
            )
    if config.etags is not None and not_a_file(config.etags):  # SQLite needs a file
        raise UsageError(f"cannot use --etags {config.etags!r}: not a regular file")
    if config.etags is not None and not _has_content(config.etags, "--etags"):
        left = a_leftover(config.etags, ("-journal", "-wal", "-shm"))
        if left is not None:  # not ours: SQLite would replay it into the new file
            raise UsageError(
                f"cannot use --etags {config.etags!r}: {config.etags + left!r} exists without it"
            )
    elif config.etags is not None:
        with open(config.etags, "rb") as file:
            head = file.read(100)
        if not (
            head.startswith(_SQLITE_MAGIC)
            and int.from_bytes(head[68:72], "big") == ETAGS_APPLICATION_ID
        ):
            raise UsageError(
                f"--etags {config.etags!r} is not a crawler --etags file: refusing to overwrite it"
            )


def _has_content(path: str, option: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise UsageError(f"cannot use {option} {path!r}: {exc.strerror}") from None


# -- cookies.txt -------------------------------------------------------------------------


def load_jar(jar: aiohttp.CookieJar, path: str) -> None:
    """Add the cookies of a Netscape cookies.txt file (absent or empty: none)."""
    if not _has_content(path, "--cookie-jar"):
        return
    import http.cookiejar  # only with --cookie-jar

    mozilla = http.cookiejar.MozillaCookieJar()
    try:
        # Expiry 0 is a session cookie (curl writes them so): kept; expired ones are not.
        mozilla.load(path, ignore_discard=True, ignore_expires=True)
    except (http.cookiejar.LoadError, OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --cookie-jar {path!r}: {exc}") from None
    now = time.time()
    for cookie in mozilla:
        if cookie.value is None or (cookie.expires and cookie.expires <= now):
            continue
        morsel: Morsel[str] = Morsel()
        try:
            morsel.set(cookie.name, cookie.value, cookie.value)
        except CookieError:
            continue  # a name no Cookie header can carry
        morsel["path"] = cookie.path or "/"
        if cookie.domain.startswith("."):
            morsel["domain"] = cookie.domain
        if cookie.secure:
            morsel["secure"] = True
        if cookie.has_nonstandard_attr("HttpOnly"):
            morsel["httponly"] = True
        if cookie.expires:
            morsel["max-age"] = str(max(1, int(cookie.expires - now)))
        origin = URL.build(
            scheme="https" if cookie.secure else "http",
            host=cookie.domain.lstrip("."),
            path=morsel["path"],
        )
        jar.update_cookies({cookie.name: morsel}, origin)


def save_jar(jar: aiohttp.CookieJar, path: str) -> None:
    """Write the jar to ``path`` in Netscape format, atomically (a temporary file in the
    same directory, renamed over it)."""
    import http.cookiejar  # only with --cookie-jar

    list(jar)  # drops the expired ones
    mozilla = http.cookiejar.MozillaCookieJar()
    host_only = jar.host_only_cookies
    # aiohttp keeps each cookie's deadline beside it; without it, cookies are kept as
    # session cookies (expiry 0), as curl writes those.
    expirations: dict[tuple[str, str, str], float] = getattr(jar, "_expirations", {})
    for (domain, key_path), cookies in jar.cookies.items():
        for name, morsel in cookies.items():
            only_host = (domain, key_path, name) in host_only
            deadline = expirations.get((domain, key_path, name))
            mozilla.set_cookie(
                http.cookiejar.Cookie(
                    version=0,
                    name=name,
                    value=morsel.coded_value,
                    port=None,
                    port_specified=False,
                    domain=domain if only_host else "." + domain,
                    domain_specified=not only_host,
                    domain_initial_dot=not only_host,
                    path=morsel["path"] or "/",
                    path_specified=True,
                    secure=bool(morsel["secure"]),
                    expires=int(deadline) if deadline else None,
                    discard=not deadline,
                    comment=None,
                    comment_url=None,
                    rest={"HttpOnly": ""} if morsel["httponly"] else {},
                )
            )
    if not_a_file(path):  # /dev/null, a FIFO: written through (a FIFO unread: ENXIO)
        with tempfile.TemporaryDirectory() as where:
            mozilla.save(os.path.join(where, "jar"), ignore_discard=True, ignore_expires=False)
            with open(os.path.join(where, "jar"), "rb") as file:
                write_now(path, file.read())
        return
    path = os.path.realpath(path)  # a symlinked jar: its file is replaced, not the link
    directory = os.path.dirname(path)
    fd, temp = tempfile.mkstemp(prefix=".cookies-", suffix=".tmp", dir=directory)
    try:
        os.close(fd)
        mozilla.save(temp, ignore_discard=True, ignore_expires=False)
        with open(temp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# -- revisits ------------------------------------------------------------------------------


class EtagStore:
    """Each URL's validators (ETag, Last-Modified) in an SQLite file of ours, read and
    written by one thread (never on the event loop); writes are batched."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crawler-etags")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[str, str | None, str | None]] = []
        self._writes: list[asyncio.Future[None]] = []

    async def open(self) -> None:
        await self._call(self._open)

    async def lookup(self, url: str) -> tuple[str | None, str | None] | None:
        found: tuple[str | None, str | None] | None = await self._call(self._lookup, url)
        return found

    def put(self, url: str, etag: str | None, last_modified: str | None) -> None:
        self._pending.append((url, etag, last_modified))
        if len(self._pending) >= _WRITE_BATCH:
            self._flush()

    async def aclose(self) -> None:
        """Write what is pending and close the file (an error is raised here)."""
        try:
            self._flush()
            for write in self._writes:
                await write
        finally:
            self._writes.clear()
            with contextlib.suppress(RuntimeError):
                await self._call(self._close)
            self._executor.shutdown(wait=False)

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            loop = asyncio.get_running_loop()
            self._writes = [w for w in self._writes if not w.done() or w.exception()]
            self._writes.append(loop.run_in_executor(self._executor, self._write, batch))

    def _call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # In the store's thread:
    def _open(self) -> None:
        import sqlite3  # only for --etags: 3 ms of every other run's start

        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            # Made complete under a temporary name, then renamed into place (through a
            # symlink: over the file it leads to, never over the link).
            path = os.path.realpath(self.path)
            directory = os.path.dirname(path)
            fd, temp = tempfile.mkstemp(prefix=".etags-", suffix=".tmp", dir=directory)
            os.close(fd)
            try:
                db = sqlite3.connect(temp)
                try:
                    db.execute(f"PRAGMA application_id={ETAGS_APPLICATION_ID}")
                    db.execute(_ETAGS_TABLE)
                    db.commit()
                finally:
                    db.close()
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute(_ETAGS_TABLE)
        self._db = db

    def _lookup(self, url: str) -> tuple[str | None, str | None] | None:
        assert self._db is not None  # noqa: S101 - opened first
        row = self._db.execute(
            "SELECT etag, last_modified FROM validators WHERE url = ?", (url,)
        ).fetchone()
        return (row[0], row[1]) if row is not None else None

    def _write(self, batch: list[tuple[str, str | None, str | None]]) -> None:
        assert self._db is not None  # noqa: S101 - opened first
        with self._db:  # one transaction: all of the batch or none of it
            self._db.executemany("INSERT OR REPLACE INTO validators VALUES (?, ?, ?)", batch)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class RevisitRecords(Records):
    """Records of a run with --etags: ``not_modified`` says whether the answer was 304."""

    __slots__ = ()

    def answered(self, task: Any, resp: Any, error: Any) -> Record:
        record = super().answered(task, resp, error)
        record.not_modified = resp.status == 304
        return record


# -- the fetcher -----------------------------------------------------------------------------


class SessionFetcher(Fetcher):
    """A Fetcher whose requests carry the jar's cookies and the stored validators, and
    whose responses fill them. Every hop of a redirect chain takes part, as a browser's
    (and curl's) would: a cookie set by a redirect is sent on to its target."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: FetchConfig,
        state: SessionState,
        **options: Any,
    ) -> None:
        super().__init__(session, config, **options)
        self._jar = state.jar
        self._store = state.store
        if self._store is not None:
            read = self._final_response

            async def final_response(
                resp: ClientResponse,
                url: URL,
                method: str,
                redirects: list[str],
                keep: int,
                cap: int | None = None,
            ) -> Response:
                result = await read(resp, url, method, redirects, keep, cap)
                self._keep_validators(resp, url)  # once the body was read whole
                return result

            self._final_response = final_response

    async def _send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | None = None,
        again: bool = True,
    ) -> ClientResponse:
        extended = await self._extend(method, url, headers)
        resp = await super()._send(method, url, extended, body, again)
        if self._jar is not None:
            self._jar.update_cookies(resp.cookies, url)
        return resp

    async def _request(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str] | None,
        left: float,
        body: bytes | None = None,
    ) -> ClientResponse:
        extended = await self._extend(method, url, headers or CIMultiDict())
        resp = await super()._request(method, url, extended, left, body)
        if self._jar is not None:
            self._jar.update_cookies(resp.cookies, url)
        return resp

    async def _extend(self, method: str, url: URL, headers: CIMultiDict[str]) -> CIMultiDict[str]:
        """``headers`` with the jar's cookies for ``url`` and its stored validators."""
        cookie = None
        if self._jar is not None:
            found = self._jar.filter_cookies(url)
            if found:
                cookie = "; ".join(f"{m.key}={m.coded_value}" for m in found.values())
        validators = None
        if self._store is not None and method in _CONDITIONAL_METHODS:
            validators = await self._store.lookup(str(url))
        if cookie is None and validators is None:
            return headers
        headers = CIMultiDict(headers)
        if cookie is not None:
            given = headers.get("Cookie")  # --cookie's, on the seeds' origins
            headers["Cookie"] = f"{given}; {cookie}" if given else cookie
        if validators is not None:
            etag, last_modified = validators
            if etag is not None:
                headers["If-None-Match"] = etag
            if last_modified is not None:
                headers["If-Modified-Since"] = last_modified
        return headers

    def _keep_validators(self, resp: ClientResponse, url: URL) -> None:
        store = self._store
        if store is None or not (200 <= resp.status < 300 or resp.status == 304):
            return
        etag = resp.headers.get("ETag")
        last_modified = resp.headers.get("Last-Modified")
        if etag is not None or last_modified is not None:
            store.put(str(url), etag, last_modified)
