"""`python -m scheduler.provider.sandbox --help`: run a sandbox from the shell."""

from __future__ import annotations

import argparse
import logging
import sys

import structlog

from scheduler.provider.sandbox.cli import add_arguments, run_from_args


def main() -> int:
    # Alone, show lifecycle lines only; `smsledger sandbox` configures logging itself.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    parser = argparse.ArgumentParser(
        prog="python -m scheduler.provider.sandbox",
        description="A local stand-in for the iletiMerkezi JSON API.",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
