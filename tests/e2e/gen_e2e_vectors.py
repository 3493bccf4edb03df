"""Write docs/test-vectors/e2e.json: ``.venv/bin/python tests/e2e/gen_e2e_vectors.py``.

Combines the crypto vectors (suites, KEM keys, chain KDF, Chain/Seal envelopes, must-fail
cases), the identity vectors (UIK, hybrid signatures, records, safety numbers, QR, KVD), the
link vectors and the group vectors (rosters, org key chain, Multi, attachments). ML-DSA
signatures and HPKE seals/wraps are randomised, so regeneration reuses those of the committed
file when they still verify; everything else is derived from fixed seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import vectors_crypto
import vectors_groups
import vectors_identity
import vectors_link
import vectors_rich

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "test-vectors" / "e2e.json"


def build(previous: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "description": "momedo end-to-end vectors; see docs/E2E.md section 'Test vectors'",
        "crypto": vectors_crypto.vectors(),
        "identity": vectors_identity.vectors(previous["identity"] if previous else None),
        "link": vectors_link.vectors(),
        "roster": vectors_groups.roster_vectors(previous.get("roster") if previous else None),
        "multi": vectors_groups.multi_vectors(previous.get("multi") if previous else None),
        "attachment": vectors_groups.attachment_vectors(),
        "rich": vectors_rich.vectors(),
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    old = json.loads(VECTORS.read_text()) if VECTORS.exists() else None
    VECTORS.write_text(render(build(old)))
    print(f"wrote {VECTORS}")
