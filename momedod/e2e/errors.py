"""The exception of the E2E layer.

Every envelope or record that cannot be parsed, decrypted or verified raises :class:`E2EError`.
For envelopes the message is always the same ("cannot open envelope"), so an error shown to a
peer or logged next to its input is never an oracle for *which* check failed; the ``reason``
attribute names the check for logs and tests. Mistakes by the calling code (a content type that
may not be sent in a Chain, an out-of-range field) raise :class:`ValueError` instead.
"""

from __future__ import annotations

__all__ = ["ENVELOPE_ERROR", "E2EError"]

ENVELOPE_ERROR = "cannot open envelope"
"""The message of every E2EError raised while opening an envelope."""


class E2EError(Exception):
    """Malformed, undecryptable or unverifiable E2E data.

    ``str(exc)`` is the generic ``message``; ``reason`` is a short identifier of the failed
    check (``"decrypt"``, ``"signature"``, ``"recipient"``, ...) for logs and tests only.
    """

    message: str
    reason: str

    def __init__(self, message: str = ENVELOPE_ERROR, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def __repr__(self) -> str:
        return f"E2EError({self.message!r}, reason={self.reason!r})"
