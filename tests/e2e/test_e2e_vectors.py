"""docs/test-vectors/e2e.json matches the library, in both directions."""

from __future__ import annotations

import json

import gen_e2e_vectors
import vectors_crypto
import vectors_groups
import vectors_identity
import vectors_link
import vectors_rich


def test_every_committed_vector_opens_and_verifies_with_the_library() -> None:
    data = json.loads(gen_e2e_vectors.VECTORS.read_text())
    vectors_crypto.check(data["crypto"])
    vectors_identity.check(data["identity"])
    vectors_link.check(data["link"])
    vectors_groups.check_roster(data["roster"])
    vectors_groups.check_multi(data["multi"])
    vectors_groups.check_attachment(data["attachment"])
    vectors_rich.check(data["rich"])


def test_regenerating_from_the_fixed_seeds_gives_the_committed_file() -> None:
    committed = gen_e2e_vectors.VECTORS.read_text()
    assert gen_e2e_vectors.render(gen_e2e_vectors.build(json.loads(committed))) == committed
