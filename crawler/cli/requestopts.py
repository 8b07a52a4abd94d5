"""The options of what a request can be, what a record carries and where bodies are kept,
for ``fetch`` and ``crawl``: storage, proxies, sessions and TLS, request bodies, record
detail, retries. Declared here and listed in ``crawler.cli.options.OPTIONS`` with the
others."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer

from crawler.cli.values import parse_size
from crawler.config import RetryConfig, field_defaults
from crawler.errors import UsageError
from crawler.retry import RETRY_STATUSES

_BACKOFF_DEFAULTS: Final = tuple(
    field_defaults(RetryConfig)[f] for f in ("backoff_base", "backoff_cap")
)

SaveDir = Annotated[
    Path | None,
    typer.Option(
        "--save-dir",
        metavar="DIR",
        help="Store bodies as DIR/ab/<sha256>; records get body_path and sha256.",
    ),
]
Warc = Annotated[
    Path | None,
    typer.Option(
        "--warc", metavar="PATH", help="Write WARC 1.1 request/response records (gzip) here."
    ),
]
WarcMaxSize = Annotated[
    int,
    typer.Option(
        "--warc-max-size",
        parser=parse_size,
        metavar="SIZE",
        help="Start a new WARC file past this size (e.g. 1G).",
    ),
]


ProxyOpt = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        "-x",
        metavar="URL",
        help="Send every request through this proxy: http://, https://, socks5:// (local "
        "DNS) or socks5h:// (the proxy resolves), [user:password@]host[:port].",
    ),
]
ProxyFile = Annotated[
    Path | None,
    typer.Option(
        "--proxy-file",
        metavar="FILE",
        help="A pool of proxies, one URL a line: each host sticks to one; a failing proxy "
        "is benched and its hosts move.",
    ),
]
NoProxy = Annotated[
    str | None,
    typer.Option(
        "--noproxy",
        metavar="HOSTS",
        help="Comma list of hosts (and their subdomains, IPs, CIDRs) that go direct; '*': all.",
    ),
]
NoEnvProxy = Annotated[
    bool,
    typer.Option(
        "--no-env-proxy",
        help="Ignore http_proxy, HTTPS_PROXY, ALL_PROXY and NO_PROXY in the environment.",
    ),
]

Cookies = Annotated[
    bool | None,
    typer.Option(
        "--cookies/--no-cookies",
        show_default="off for fetch, on for crawl",
        help="Keep the cookies servers set, for the run (per host, RFC 6265).",
    ),
]
Cookie = Annotated[
    list[str] | None,
    typer.Option(
        "--cookie",
        metavar="NAME=VALUE",
        help="Send this cookie (repeatable), to the input URLs' origins only.",
    ),
]
CookieJar = Annotated[
    Path | None,
    typer.Option(
        "--cookie-jar",
        metavar="FILE",
        help="Load cookies from FILE (Netscape cookies.txt, as curl -b) and save them there at"
        " the end (as curl -c); turns --cookies on.",
    ),
]
Cacert = Annotated[
    Path | None,
    typer.Option(
        "--cacert", metavar="FILE", help="Trust the CAs of this PEM bundle instead of the system's."
    ),
]
Cert = Annotated[
    Path | None,
    typer.Option(
        "--cert", metavar="FILE", help="Client certificate (PEM; with its key, or --key)."
    ),
]
Key = Annotated[
    Path | None, typer.Option("--key", metavar="FILE", help="The client certificate's key (PEM).")
]
Etags = Annotated[
    Path | None,
    typer.Option(
        "--etags",
        metavar="FILE",
        help="Keep each URL's ETag/Last-Modified in FILE and ask only for changes next time;"
        " a 304 is a record with not_modified: true.",
    ),
]


Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        metavar="STRING|@FILE",
        help="Request body of every URL line (JSON request lines bring their own); "
        "the method is POST unless --method says otherwise.",
    ),
]
JsonBody = Annotated[
    str | None,
    typer.Option(
        "--json",
        metavar="STRING|@FILE",
        help="Like --data, with a JSON body (checked) and Content-Type: application/json "
        "unless -H gives one.",
    ),
]
RetryUnsafe = Annotated[
    bool,
    typer.Option(
        "--retry-unsafe",
        help="Retry requests that are not idempotent (POST, PATCH, ...) also after they "
        "were sent (they could be applied twice).",
    ),
]


def body_file(option: str, value: object) -> object:
    """``--data``/``--json``'s value: ``@FILE`` is the file's bytes (a config file's
    ``json`` may also be a table or array: the JSON to send)."""
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    path = value[1:]
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {option} file {path!r}: {exc.strerror}") from None


MaxTime = Annotated[
    float | None,
    typer.Option(
        "--max-time",
        min=0.001,
        metavar="S",
        show_default="none",
        help="Stop after S seconds (exit 0; URLs not sent get no record; resumable).",
    ),
]
IncludeHeaders = Annotated[
    bool,
    typer.Option(
        "--include-headers",
        help="Records carry the final response's headers (names lower-cased, repeats as lists).",
    ),
]
IncludeRequest = Annotated[
    bool,
    typer.Option(
        "--include-request",
        help="Records carry the final request's headers as sent (credentials [redacted]).",
    ),
]
IncludeBody = Annotated[
    bool,
    typer.Option(
        "--include-body",
        help="Records carry the body (up to --max-bytes): text if its charset decodes it, "
        "else base64.",
    ),
]
NoFollow = Annotated[
    bool,
    typer.Option(
        "--no-follow", help="Do not follow redirects: a 3xx is recorded with its location."
    ),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "-v",
        "--verbose",
        help="Print each request and response head on stderr, as curl -v (credentials [redacted]).",
    ),
]
RetryOn = Annotated[
    str | None,
    typer.Option(
        "--retry-on",
        metavar="STATUSES",
        show_default=",".join(map(str, sorted(RETRY_STATUSES))),
        help="Statuses retried, comma-separated ('': none, only errors are retried).",
    ),
]
Backoff = Annotated[
    str | None,
    typer.Option(
        "--backoff",
        metavar="BASE,MAX",
        show_default=",".join(f"{d:g}" for d in _BACKOFF_DEFAULTS),
        help="Retry back-off in seconds: BASE doubles per retry up to MAX (with jitter).",
    ),
]
Workers = Annotated[
    str,
    typer.Option(
        "--workers",
        metavar="N|auto",
        help="Worker processes (auto: the usable cores); hosts are shared out among them, "
        "-c and --rps are divided, one process writes the output.",
    ),
]
