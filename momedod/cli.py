"""The ``momedod`` command: run the server, check a config file, print the default config,
restore a backup."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from momedod.config import Config, ConfigError, default_config_text, load_config

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

    restore = commands.add_parser(
        "restore",
        help="restore a backup made with 'momedoctl backup' (the server must be stopped)",
        description="Check a backup made with 'momedoctl backup' and restore it as the state "
        "directory of the config (database and TLS certificate). The server must be stopped. "
        "A damaged or incomplete backup is refused and nothing is changed.",
    )
    restore.add_argument("backup_dir", type=Path, metavar="DIR", help="the backup directory")
    restore.add_argument("-c", "--config", type=Path, metavar="FILE", help=config_help)
    restore.add_argument(
        "--dev", action="store_true", help="restore into the dev server's ./.momedo-dev"
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace an existing state directory (it is moved to STATE_DIR.before-restore-TIME, "
        "not deleted)",
    )

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
    if args.command == "restore":
        return _restore(config, args.backup_dir, force=args.force)

    from momedod.server.daemon import run  # the daemon stack is only imported to run it

    return run(config)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _restore(config: Config, backup_dir: Path, *, force: bool) -> int:
    from momedod.store.backup import BackupError, RestoreRefused, restore_backup

    if config.storage.engine != "sqlite":
        print(
            f"momedod: restore refused: the {config.storage.engine} engine keeps its data in "
            "the database server; restore it with that server's tools (pg_restore or a base "
            "backup, see docs/ADMIN.md). 'momedod restore' restores SQLite backups only.",
            file=sys.stderr,
        )
        return 1
    try:
        result = restore_backup(
            backup_dir,
            config.server.state_dir,
            admin_socket=config.admin.socket,
            force=force,
        )
    except RestoreRefused as e:
        print(f"momedod: restore refused: {e}", file=sys.stderr)
        return 1
    except (BackupError, OSError) as e:
        print(f"momedod: restore failed: {e}", file=sys.stderr)
        return 1
    m = result.manifest
    created = m.created.replace("T", " ").replace("Z", " UTC")
    tls = [f.path for f in m.files if f.kind == "tls"]
    lines = [
        f"Restored {backup_dir.absolute()} (made {created} by momedo {m.momedo_version}) "
        f"into {result.state_dir}:",
        f"  database: {_count(m.users, 'user')}, {_count(m.devices, 'device')}, "
        f"{_count(m.mailbox_entries, 'queued message')} (schema version {m.schema_version})",
    ]
    if tls:
        lines.append(f"  TLS: {', '.join(tls)}")
    else:
        lines.append(
            "  TLS: none in the backup; configure the old certificate (cert/key) or devices "
            "will refuse the new one momedod generates"
        )
    if m.fingerprint:
        lines.append(f"  certificate fingerprint at backup time: {m.fingerprint}")
    if result.owner:
        lines.append(f"  files owned by: {result.owner}")
    if result.moved_aside:
        lines.append(f"  the previous state directory was moved to {result.moved_aside}")
    lines.append("Start momedod now; devices pick up their queued messages when they connect.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
