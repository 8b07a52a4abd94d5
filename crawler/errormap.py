"""The one seam where foreign exceptions become ours: ``map_exception`` turns aiohttp's
exceptions, and the OS and TLS errors under them, into the contract's error kinds
(crawler.errors). The fetcher raises what it returns; nothing else maps them.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import sys
import traceback
from typing import Final

from aiohttp import client_exceptions, http_exceptions

from crawler import errors
from crawler.records import safe_text

_MAX_BUGS: Final = 10  # distinct internal errors a run prints the traceback of


def map_exception(exc: BaseException, *, deadline_left: float) -> errors.FetchError:
    """Translate a foreign exception into a FetchError. Most specific cases first."""
    if isinstance(exc, errors.FetchError):
        return exc
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError and aiohttp's timeouts
        if deadline_left <= 0.001:
            return errors.Timeout("deadline exceeded")
        kind = "connect" if isinstance(exc, client_exceptions.ConnectionTimeoutError) else "read"
        return errors.AttemptTimeout(f"{kind} timeout")
    # The proxy's own failures (crawler.proxied), before the connect and response errors
    # they are subclasses of: they count against the proxy, not the target.
    if isinstance(exc, client_exceptions.ClientProxyConnectionError):
        return errors.ProxyError(f"cannot connect to proxy: {_describe(exc.os_error)}")
    if isinstance(exc, client_exceptions.ClientHttpProxyError):
        return errors.ProxyError(f"proxy answered CONNECT with {exc.status} {exc.message}")
    if "aiohttp_socks" in sys.modules:  # imported only when a SOCKS proxy is used
        from aiohttp_socks import ProxyConnectionError, ProxyTimeoutError
        from aiohttp_socks import ProxyError as SocksError

        if isinstance(exc, ProxyConnectionError | ProxyTimeoutError | SocksError):
            return errors.ProxyError(f"SOCKS proxy: {safe_text(str(exc))}"[:300])
    if isinstance(exc, client_exceptions.ClientConnectorDNSError):
        return errors.DNSError(_describe(exc.os_error))
    if isinstance(exc, client_exceptions.ClientConnectorCertificateError):
        return errors.TLSError(f"certificate error: {exc.certificate_error}")
    if isinstance(exc, client_exceptions.ClientConnectorSSLError | ssl.SSLError):
        return errors.TLSError(_describe(exc))
    if isinstance(exc, client_exceptions.ClientConnectorError):
        return errors.ConnectError(_describe(exc.os_error))
    if isinstance(exc, client_exceptions.ClientPayloadError):
        # Body shorter than Content-Length, broken chunked encoding, bad compression.
        return errors.ProtocolError(_describe(exc))
    if isinstance(exc, client_exceptions.ClientResponseError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, http_exceptions.HttpProcessingError) or exc.status in (0, 400):
            return errors.ProtocolError(f"malformed response: {_describe(cause or exc)}")
        return errors.ProtocolError(_describe(exc))
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return errors.ProtocolError(f"malformed response: {_describe(exc)}")
    if isinstance(exc, client_exceptions.ServerDisconnectedError):
        return errors.ConnectError("server disconnected")
    if isinstance(exc, client_exceptions.InvalidURL):
        return errors.InvalidURL(_describe(exc))
    if isinstance(exc, client_exceptions.ClientOSError | OSError):
        return errors.ConnectError(_describe(exc))
    if isinstance(exc, client_exceptions.ClientError):
        return errors.ProtocolError(_describe(exc))
    if isinstance(exc, UnicodeError | ValueError):
        # What a server sent that does not parse (a header value, a URL), met below
        # aiohttp's own checks.
        return errors.ProtocolError(_describe(exc))
    # Anything else (TypeError, AttributeError, KeyError, RuntimeError, ...) is a bug of
    # ours, not the server's doing: it ends this URL, never the run (see report_bug).
    return errors.InternalError(f"internal error (a bug in crawler): {_describe(exc)}")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, http_exceptions.HttpProcessingError | client_exceptions.ClientResponseError):
        # str() of these is "400, message:" with the reason on the lines after it (the
        # parser's description, the bytes it choked on, a ^ pointer): say what was wrong.
        lines = [line.strip() for line in str(exc.message).splitlines()]
        text = " ".join(line for line in lines if line.strip("^~ "))
        if not text:
            code = (
                exc.status if isinstance(exc, client_exceptions.ClientResponseError) else exc.code
            )
            text = f"status {code}"
    else:
        text = str(exc).strip()
        if isinstance(exc, OSError) and exc.errno:
            # The OS's own words ("Connection refused"), not asyncio's "Connect call
            # failed ('127.0.0.1', 1)", which hides the reason behind the address.
            return safe_text(os.strerror(exc.errno))
        if isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        text = text.splitlines()[0] if text else ""
    text = safe_text(text)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def report_bug(exc: BaseException, reported: set[tuple[str, str, int]]) -> None:
    """Print the traceback of an unexpected exception on stderr, once per distinct bug
    (its type and the line that raised it, kept in ``reported``) and run, at most
    _MAX_BUGS of them: a bug met by every URL must not flood the terminal. Even with -q:
    it is a bug report, and the record alone would not say where it is. The URL is not
    printed (it may hold credentials); its record has it."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    key = (type(exc).__qualname__, last.filename if last else "", (last and last.lineno) or 0)
    if key in reported or len(reported) >= _MAX_BUGS:
        return
    reported.add(key)
    text = "".join(traceback.format_exception(exc))
    with contextlib.suppress(OSError, ValueError):  # stderr closed: the record stays
        sys.stderr.write(
            "crawler: internal error (a bug in crawler; please report it with this "
            f"traceback). The URL's record has error kind 'internal'.\n{text}"
        )
        sys.stderr.flush()
