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
    sub.add_parser("hash-token", help="print the SHA-256 hash of a token read from stdin, "
                   "for --auth-tokens-file",
                   description="Reads one token from stdin (a trailing newline is dropped) "
                   "and prints its SHA-256 hex digest: put that, never the token, in the "
                   "tokens file.")
    ns = parser.parse_args(argv)
    if ns.command == "hash-token":
        return _hash_token()
    if ns.command == "serve":
        settings = config.from_args(ns)
        logs.setup(settings.log_level, settings.log_format)
        from budgetd.auth import ConfigError

        if settings.workers > 1:
            from budgetd.workers import supervise

            try:
                return supervise(settings)
            except ConfigError as e:
                print(f"budgetd: error: {e}", file=sys.stderr)
                return 2
        from budgetd.server import serve

        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        try:
            asyncio.run(serve(settings))
        except ConfigError as e:
            print(f"budgetd: error: {e}", file=sys.stderr)
            return 2
        return 0
    parser.print_help()
    return 2


MAX_TOKEN_INPUT_BYTES = 4096


def _hash_token() -> int:
    from budgetd.auth import hash_token

    data = sys.stdin.read(MAX_TOKEN_INPUT_BYTES + 1)
    token = data.rstrip("\r\n")
    if not token or len(data) > MAX_TOKEN_INPUT_BYTES or "\n" in token:
        print("budgetd hash-token: expected one token (1..4096 bytes) on stdin",
              file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
