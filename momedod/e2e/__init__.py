"""Client-side end-to-end encryption (docs/E2E.md): pure functions and state objects, no I/O.

Modules:

* :mod:`.errors` -- :class:`~.errors.E2EError`, the one exception for anything that cannot be
  opened or verified.
* :mod:`.suites` -- the cipher suites (HPKE KEM/KDF/AEAD) and KEM keys derived from seeds.
* :mod:`.envelope` -- the envelope ``Header``, ``Addr`` and the content types.
* :mod:`.padding` -- 256-byte padding buckets and Padmé.
* :mod:`.seal` -- Seal: one device to one device (HPKE, signed by the sender's device key),
  and the Seal replay guard.
* :mod:`.chain` -- per-sender symmetric chains for conversations (CHAIN envelopes).
* :mod:`.identity`, :mod:`.records`, :mod:`.safety`, :mod:`.trust` -- identity keys and
  hybrid signatures, key-directory records and device lists, safety numbers and QR pins,
  and the contact-pin store.

Nothing here reads a clock or does I/O: times are passed in as milliseconds since the epoch,
and randomness comes from ``os.urandom`` only where a fresh secret is created.
"""
