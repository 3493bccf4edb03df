"""The ``momedod`` command: run the server, check a config file, print the default config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from momedod.config import ConfigError, default_config_text, load_config

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="momedod", description="momedo messenger server (end-to-end encrypted)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "config file (default: $MOMEDO_CONFIG, else /etc/momedo/momedod.toml)"

    run = commands.add_parser("run", help="run the server", description="Run the server.")
    run.add_argument("-c", "--config", type=Path, metavar="FILE", help=config_help)
    run.add_argument(
        "--dev",
        action="store_true",
        help="development mode: state and admin socket in ./.momedo-dev, loopback only, "
        "no config file unless given",
    )

    check = commands.add_parser(
        "check-config",
        help="validate the config file and exit",
        description="Validate the config file; exit 0 if it is usable, 1 if not.",
    )
    check.add_argument("-c", "--config", type=Path, metavar="FILE", help=config_help)

    commands.add_parser(
        "default-config",
        help="print the commented default config",
        description="Print a config file with every key at its default, commented out.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``momedod``; returns the exit code (argparse exits 2 on usage errors)."""
    args = _build_parser().parse_args(argv)
    if args.command == "default-config":
        sys.stdout.write(default_config_text())
        return 0
    try:
        config = load_config(args.config, dev=getattr(args, "dev", False))
    except ConfigError as e:
        print(f"momedod: {e}", file=sys.stderr)
        return 1
    if args.command == "check-config":
        print(f"{config.source or 'built-in defaults (no config file found)'}: ok")
        return 0

    from momedod.server.daemon import run  # the daemon stack is only imported to run it

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
