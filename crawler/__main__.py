"""``python -m crawler`` and the ``crawler`` console script: one entry point.

Stop signals are deferred before anything heavy is imported (see ``crawler.signals``):
a Ctrl-C while orjson, rich or aiohttp load must not interrupt their import (a traceback,
at worst a crash); it is remembered, and the run that follows stops at once.
"""

from crawler import signals


def main() -> None:
    signals.defer()
    from crawler.cli import main as cli_main

    try:
        cli_main()
    finally:
        signals.ignore()  # the exit status is ours, whatever comes now (see there)


if __name__ == "__main__":
    main()
