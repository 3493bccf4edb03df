"""Finding the admin socket and explaining why it cannot be reached (momedoctl, momedo-tui).

Both operator tools take the same ``-c FILE`` / ``--dev`` options as the daemon and resolve the
socket through the same configuration rules, so they always talk to the daemon that a given
config file describes. No I/O happens here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from momedod.config import load_config

ADMIN_GROUP = "momedo-admin"


def add_socket_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config`` and ``--dev``, the options that choose the daemon to talk to."""
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="momedod config file that names the socket "
        "(default: $MOMEDO_CONFIG, else /etc/momedo/momedod.toml)",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="talk to the dev server of this checkout (./.momedo-dev/admin.sock)",
    )


def socket_path(ns: argparse.Namespace) -> Path:
    """The admin socket for parsed ``-c``/``--dev`` options; raises ConfigError."""
    return load_config(ns.config, dev=ns.dev).admin.socket


def connect_error(path: Path, e: OSError) -> str:
    """Why connecting to the socket at ``path`` failed, in one line an operator can act on."""
    prefix = f"cannot reach momedod at {path}"
    if isinstance(e, FileNotFoundError):
        return f"{prefix}: no such socket — is the daemon running?"
    if isinstance(e, ConnectionRefusedError):
        return f"{prefix}: connection refused — is the daemon running?"
    if isinstance(e, PermissionError):
        return f"{prefix}: permission denied — add your account to the group {ADMIN_GROUP}"
    return f"{prefix}: {e.strerror or e}"
