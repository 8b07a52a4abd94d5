"""``python -m crawler`` is the same program as the ``crawler`` console script."""

from crawler.cli import main

if __name__ == "__main__":
    main()
