"""Which run options ``fetch`` and ``crawl`` take, in the order ``--help`` lists them
(after each command's own): the commands are declared with them (``cli.commands``), and a
config file is checked against them (``cli.configfile``)."""

# The order of the options in `--help`, after each command's own.
_BEFORE_METHOD = (
    "output",
    "concurrency",
    "per_host",
    "rps",
    "per_host_rps",
    "burst",
    "adaptive",
    "retries",
    "timeout",
    "connect_timeout",
    "max_redirects",
    "max_bytes",
    "queue_size",
    "header",
    "secret_header",
    "user_agent",
)
_BEFORE_DEDUP = ("breaker_threshold", "breaker_cooldown", "insecure", "stats_json", "state")
_AFTER_DEDUP = (
    "progress",
    "quiet",
    "fail_on_error",
    "grace",
    "block_private",
    "resolve",
    "save_dir",
    "warc",
    "warc_max_size",
    "no_uvloop",
    "proxy",
    "proxy_file",
    "noproxy",
    "no_env_proxy",
)
# Issue 15's records and requests options (both commands).
_DETAIL = (
    "max_time",
    "include_headers",
    "include_request",
    "include_body",
    "no_follow",
    "verbose",
    "retry_on",
    "backoff",
    "workers",
)
_SESSIONS = ("cookies", "cookie", "cookie_jar", "cacert", "cert", "key", "etags")
FETCH_OPTIONS = (
    *_BEFORE_METHOD,
    "method",
    *_BEFORE_DEDUP,
    "no_dedup",
    *_AFTER_DEDUP,
    "data",
    "json",
    "retry_unsafe",
    *_SESSIONS,
    *_DETAIL,
)
CRAWL_OPTIONS = (*_BEFORE_METHOD, *_BEFORE_DEDUP, *_AFTER_DEDUP, *_SESSIONS, *_DETAIL)
