"""`budgetd serve`: the server's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

from budgetd import __version__, config, logs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="budgetd", description="LLM spend budgets over gRPC")
    parser.add_argument("--version", action="version", version=f"budgetd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the gRPC server")
    config.add_arguments(serve_p)
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        settings = config.from_args(ns)
        logs.setup(settings.log_level, settings.log_format)
        from budgetd.server import serve

        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(serve(settings))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
