"""Test vectors for suites, the chain KDF, Chain envelopes and Seals, and their checker.

``vectors()`` returns a JSON-ready dict (bytes as lowercase hex) built from fixed seeds;
``check(v)`` verifies a loaded dict against the library and raises AssertionError on the
first mismatch. The lead merges this into docs/test-vectors/e2e.json.

Everything is deterministic except HPKE encryption: pyca draws the KEM randomness itself, so
the Seal envelopes below were produced once by :func:`make_seal_envelopes` and are stored as
constants together with the recipient's seed; ``check`` must open them. Regenerate them (and
paste the output of ``python tests/e2e/vectors_crypto.py``) only when the Seal format changes.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.e2e import chain, seal, suites
from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.errors import E2EError

# -- fixed inputs ------------------------------------------------------------------------

SENDER = Addr("M8N22HTR", 1)
RECIPIENT = Addr("49K49JAC", 2)
OTHER = Addr("7QXW3ZC7", 1)
# RFC 8032 section 7.1, test 1 secret key: the sender's device key (DK).
SENDER_DK_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
OTHER_DK_SEED = bytes(range(100, 132))
KEM_SEEDS = {
    1: bytes(range(32)),
    2: bytes(range(32, 64)),
    3: bytes(range(64, 96)),
}
CK0 = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
CONV_ID = bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf")
CHAIN_ID = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
PREV_CHAIN_ID = bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf")
EPOCH = 7
CHAIN_N = 5
CHAIN_CK_N = bytes(range(200, 232))
MSG_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
KVD = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEAL_KEY_KIND = 1  # SPK
SEAL_KEY_ID = 42
TEXT = "Grüezi from the town hall".encode()


def dk(seed: bytes) -> Ed25519PrivateKey:
    """An Ed25519 device key from a seed."""
    return Ed25519PrivateKey.from_private_bytes(seed)


def dk_public(seed: bytes) -> bytes:
    """The raw public key of :func:`dk`."""
    return dk(seed).public_key().public_bytes_raw()


def addr_json(a: Addr) -> dict[str, Any]:
    return {"user_id": a.user_id, "device_id": a.device_id}


def addr_from_json(d: dict[str, Any]) -> Addr:
    return Addr(d["user_id"], d["device_id"])


# -- the stored Seal envelopes (randomised HPKE: produced once) --------------------------

SEAL_ENVELOPES: dict[int, str] = {
    1: (
        "4d4401010001010000002a000001306526f1c4133510191f108f11ac2c065392ad22788d739d48688e732d1a"
        "cd5528a285853b840f06a667c442df726499b0fcb46abd4b1f9389c0f57665d499b6065f5096b9ff88323640"
        "e289586c335aa982c60dfb9bf182171eeb6f2695b94a293d8d04f8b3d62664f35eef93de89e0c892e6a6ad94"
        "6bbb05a75857127c7eb0724cb96ff85f2322adeb1edbc7886f3b435ef691a26fa1306b8ef852696396991888"
        "e3ce78acd5e2951e684fafae86d6e2e065e636cc6d8ea7d4ef633ef2319d001e8ebbf38797bbead512037e58"
        "9c81bf1f5250b556160f5b17ee2fbef0c30c5da7a9e99914bdc6b9e45767a579d615b735f2d55a93d58cb511"
        "31b689701d0abd87cdc544ef4f657f9dde30b41d769f2083aa661f6a90d188796ef37d931a395bb54f7915fc"
        "97f7cd829e64ac28887bb6"
    ),
    2: (
        "4d4401010002010000002a0000057043d8cb3a59e6a5b35772a08b1607636c5f6d01075207f03bebaccc8b9d"
        "63a8e82c25d2646288172bdad3987a833c7eaa0488760a91a8843ba208f662717a80089d40c67cb0966f8c8c"
        "48065d145a3c23c4b8cc2293eb8077307428d64edd92cba71e1d1d4d6b74a15bab4705be40ca27c2cd6ca23a"
        "7cbd5ce1511cc26d02f1be6b4130325805756e6a06501ae770de2565d992d269642906834e05d1877c69f2cb"
        "4ba5b3707814248a77e97126b941b5a84c66f60adeda2d856d0cb577c4f556e3564edc25026d54c36a0603d1"
        "f71009454a01aad42a5ffb8a306bbdc4a2dfeae61801b77a6ebbcd074d21e2b57f57eac9930afca32cbc9aa1"
        "85e493aa9396e1d4293b697cc25ba124de9e089f94390367449bcffb03d011539b7ea5f3cd06b1d3a03c32bd"
        "4002fd494952655e46556ba85538787ea903b0e824cda65a48a5607732caddefb3c960e3fc41a95e70228473"
        "ea2784363f9d781903a4f9487811d3fdbc012802e72781ba08357cc27c68cdc0150c8577ba122a0cdfc9b2f3"
        "3860241e9eccca2df313b7892150ce5472645cd21cdf71c790ee8988b5931e67f03748ef69cd3a0fdcceeb16"
        "c9d8a5190119df8d1996738149caad1509bbeb22646616c8da6e85feb269734ddf456ffdfa81bae5aafb9ba4"
        "9ec4d8a9f854605e50bc930f1c5eb8bf76083a35b56015810f2e269450ce2343436cd30b548e380727f876a8"
        "9a2a5f6644b823233b91e0c9069d2c1e333a6f7d9f85e5350b3ae93af0c5f5cc4a43f870cb88d059972f5a6a"
        "a9c1162946b00c3aa7f368be3193ecb6068d783c9649ef24c02824ed7baea8d8db4588fe85c4b74074b0ed4b"
        "ad8e901290bf973e54dbfcf428adeb12d3c4b0444e06a8ad2d0151457565caeb2cd4742cc16fcfc54a492e01"
        "64e8c87c74127ce3ab73691be1f5d74542bdea7274174727db7b863719d27ec024c04df992a677288e5d4ffd"
        "aa85455c3a87b8e6fd07ebbc83319881f7718aa174892ba92c88648c8852e7c6dc451c49b7f72bb6c89647de"
        "b945dbb96eab80955b61116a3891b25dd508d0a98479d6f4329c6c4740215bd4f1061418dfaafe87db1f952c"
        "5afdd8f2ab7297fb2469395ec72c1ffa45b9aa66740649aec720b6b81e3b3333654d4c7b9bf5f2c3eb21a120"
        "eeb241753c999a98b347b88f2a260212461d3370253a6bdc432b4dce7d9655e58779e909516fb2715d6476b8"
        "d0807669a004a7a9e372e6d99c1a9860bebe303806688f1fe3dc3f4ae98fb4db9e08b2d4e12eb24265dd7fd7"
        "6649b1821237d253943e9276d4ab18761cfc5a66aa380e18df6205af5bed16ea47f9fdd7f300a4c414b24f2d"
        "a25a8b6f453b78456187804b12055e77f5594f5987939c5b03ebea51772f83c46c202764b88ada6bfd5caa70"
        "aa783679321cb958372b7d8bdaf2b8eaf80878c6f22ca436870fc54898d7bdb8f020114e551336494ea2e06c"
        "ae567cec57fe247d08a85de19d8f90353b51072ef2628c159497b150d65dedceb51e0e19cc8efc77e433620a"
        "f65a844fdd948069935b716a0cc6474bb9f91a8ffec363d69cd7a261ffdd8101ab9d3bf6f2371c9e47b70873"
        "7cc34fc2331a0dde504e8084583394dcb84b67ee958087d84faf6b7ed02cff151182c143979f72fdef9ac0cd"
        "c195f8527aa861b13dbf2d954e3c9cec80e56fbe3e7f34f0a829af285efffaf8c78c748fe6835291a743ffc5"
        "97e17a7ed680c3929c5b192a7c92eba8274543c456694781ce7c1c6f9da056d081ecccc76ecc77d01281369b"
        "a1f11357ed426e9bea84e2ad1822abfca188eb5682ac62775d9d5937b51c3c74dfb7074005d21e3382086785"
        "3750b0d04594bf47f1b6e004049b8f987b618161dbeb524ee2555bda68de92db0e3eeae4ff4ff1235f980be8"
        "b06dc3a5768eefea979368682019f475443885ea0530a4676ab3cc51feb60b2632827320946815a2e8cb4c"
    ),
    3: (
        "4d4401010003010000002a000007910d838c754f4ffaec21efe90f45a3099509dde1debd4f79602f1c5ca450"
        "11e592464722c4420cf9713fce459094d3616047c31caa9fb159e325cba2cf1373a6073923f08aa52cafd4d8"
        "e7746a407f12c868ed83de7bdd51f5d34703779e7a7ed589dfbe4a58b111ac7857b2309bd391405b1045ba48"
        "291553182cb8086b898d580b0cdcc16ae8c98a51e65a42de9bfa1644f846fbacaef8a6cd097a92a1d7df8e87"
        "9b1356ad452f0587629dfb71852b00a25ee77b7b043fcd08bb48de2d6fec3ddfb5926a204493336176afa317"
        "564090abe3bfd0463b832896993423758e3916ebfe730277d83f26e7f35a87b5e590d1273a1219fa02b9de97"
        "ff09905c561f588146b5f0e131d9640b2d81d306d9bcbaf7c24fbba04e9d69662922c76a2f56d7fc0dcbac6d"
        "eef061ba9064d3888e6ae42e4a974b6e30f4e41e35b350ec9073b8930be50d9cd2b8a8594440ebc4ef717653"
        "f064088f5a44aedbc59a8d80aede98df607cce1124a0cc82f09f99ea6b94b3a6b0601c26967f8982fe0a9618"
        "16075a9fe633dc762656615aacc9858471cec4d95f455a64a24c3523435342f9af72602c3ac24e069e64200a"
        "fcb448feba10dd889956d10d541bd44731fb21945407472fab1d9b45d0e6d465e452c3c57ee7090629ab7642"
        "0b21a0ae646c17ec80f12536e5ff19f7ae06b73db55be858537896a7ca69883649a7ae26b40bbeb5636e5ec5"
        "a93e7da1938ae673e47a3784d95100cd85d16f90069deb8c9b47293ed8c21bebf1af595a292d9dec3bc4259a"
        "b39031fde70f2a73b797554100f0c16caefe53ea3ee201d3d1f4d17dd6c7e351de37c0ad919da0a065ff6578"
        "8b2abd11fd9865daf6fdd3752e482e89f600a4f0d3307daa85614769177120fd0406a7a114540e32a5b04f87"
        "1781d8bb12da250a08f6fb4e64010e9967f9a11e526aee066fd8f23a22fad31151ab86983dcf208b2df99180"
        "42d603b8895ebb21e2d427b70396a6d575337dfc4268fc4a2e1f2fc7efb638dd2381022129bfdce65388744b"
        "a5ddffcbdc193cf187e65e21e2bec26365efeb6e0cd4f880d657efea90f631303e58893e1202bacff7423065"
        "245fe2e8e0d102142ff584e38e424e073982bfb75cadf00b05488921a0041126945c8418b0db3ed91443d0d2"
        "2ee295a42b573d8472ca652becaf8a60ce27c789726d36b2d52da34ea032f50f62c505502fe8d4d3b246f6c6"
        "de0cb2adc6e723100a871cfb2832eea13a43a6cd07cd527060b70a3df2d911bfe21dc6c61ad60eb4c7ab72e6"
        "0ca207a34f790efa7eebbef962136bde31f5b0bec2e57f530d3d11bfe3ac19166e1c9691eee12c590904c0a8"
        "99f8539be245e5cf7e5efad62fa7461fc1334629d17979f803546bcc5eb6ae41602ced0e5f64bab772226b59"
        "46ca4b371033d9529b3fa8f598e265d074292c07a63196880b0d49def182151f93b25328dc161814e826a106"
        "61f344026cf900ac838a08d8a5a225d820b435b7fa4b40435707f4608a736575736711f2dcc41881af689bfa"
        "aaeb75ddbfeb1ca124e1462a56a62bd3d3914e4865c3720099f47cffa89dea1c63f9776eabc0462df224e859"
        "68523cc61b335d25d3cc54b25c434120c7ddc6a4d78a7a428496d3d3237eea801c1b4cede6569cb402d4dd18"
        "46c4b6ae0e2605fe32d51274ecbdab0977f0de3a68bcfb8756a30e366f738ae6d303b86ea62e0823bf3fd626"
        "72547797dd9532b0d5f308a55d424fd539b3660691b15468574a0da110cd81f8b8634c5241467c44832c5cb2"
        "d393d0c5c1e712f6c6583db3cb0c8b541ee07b222b25f6dc785ba1fa4fb8cd0130b3bfee4e4504e4126511b6"
        "1a3e1056258c401ee1940d391832d483ac55fbc843016757c5adb20a2064c7d8152c4945871e98f229a68a54"
        "b33e37a116b1dbe92b7cf70b652f63006a7b5e1b8025b03fc8998cf081f283c7e1dfd765a0f130eea4102345"
        "f1460966d06dde3e370838ef72cc898e20de66182e33cd97f2e35e0bf88f0558d36cd1dfa3cc41096e7b0539"
        "99aa145b7ecd823c26c9139e01049874c937c0c69ead1e3af66c2f24513f16f30b0a46000512377c4dc4c0e7"
        "eb8923d31526625a268f615aad8917811188cbe1e63730df1320200454cf47a61012c6daf73262512d39fcc6"
        "1a0415e3110354901134ac3bb7e7c4f2d04dc1778b427a5a3749ef3f3a8b53260f642c6552758012da8c4404"
        "7a647c6462f499922475805f3bb0a76293beb40589c6cd63bae17935d28303a16b40e71218a6f1e92134d4bb"
        "7f0c53b46e41da2888b88c882a8a01a82767bf72111994241e248b86082a2044079b97ef1246b2b4d1f89139"
        "deaa39465ec5647ab61249a56cb284ed1b20d59a0bd2499384de3de41517be3ebb0aafb38f0e00c367e7975c"
        "9cc7f148ed19f988b66bb4acd1107e912f8ad4f9781247b464122cf269d50f26130fe1045d148bbee8b14a67"
        "fee08e31d7e00fda87a0fc8a19157fa4b146a60d5c77a9e7836a82d108dc667fe0955ded29771833af7feff7"
        "7a7ddc4e467ab8263086bf9c3123b8aa52a57e2966824751189a2205894295cb6567fde2b70a3e0feb8ddc83"
        "714f38ec3021d132cef7f69a50e851d492f2f697554f3f576eef97f8a33cc875e803bb48afe4e6f89ab7eb56"
        "9d96155a2e50d46969fd51709cc2005a11c1bd9b5ed408205268a9996946a819cb11ffc503b0751052af39a0"
        "673ede16112ad8ef646a5fc413e62dba"
    ),
}
"""Seal envelopes (hex) from SENDER to RECIPIENT's KEM_SEEDS key, per suite."""


def make_seal_envelopes() -> dict[int, str]:
    """Fresh Seal envelopes for SEAL_ENVELOPES (HPKE output differs every run)."""
    out = {}
    for suite_id in (1, 2, 3):
        suite = suites.ALL_SUITES[suite_id]
        _, public = suites.kem_keypair_from_seed(suite, KEM_SEEDS[suite_id])
        out[suite_id] = seal.seal(
            suite,
            SENDER,
            dk(SENDER_DK_SEED),
            RECIPIENT,
            SEAL_KEY_KIND,
            SEAL_KEY_ID,
            public,
            TS_MS,
            MSG_ID,
            ContentType.TEXT,
            TEXT,
            allow_test_suites=True,
        ).hex()
    return out


# -- building the vectors ----------------------------------------------------------------


def _chain_envelope(
    suite_id: int,
    content_type: int = ContentType.TEXT,
    sender: Addr = SENDER,
    sender_dk_seed: bytes = SENDER_DK_SEED,
) -> bytes:
    suite = suites.ALL_SUITES[suite_id]
    mk, _ = chain.chain_step(CHAIN_CK_N)
    return chain._build_envelope(
        suite,
        CHAIN_ID,
        CHAIN_N,
        mk,
        conv_id=CONV_ID,
        epoch=EPOCH,
        sender=sender,
        sender_dk=dk(sender_dk_seed),
        ts_ms=TS_MS,
        msg_id=MSG_ID,
        kvd=KVD,
        content_type=content_type,
        content=TEXT,
    )


def _chain_dist() -> chain.ChainDist:
    return chain.ChainDist(CONV_ID, EPOCH, CHAIN_ID, CHAIN_N, CHAIN_CK_N, PREV_CHAIN_ID, 3)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _with_u16(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + value.to_bytes(2, "big") + data[offset + 2 :]


def _seal_must_fail(suite_id: int, env: bytes) -> list[dict[str, Any]]:
    enc_offset = 15  # Header(6) | key_kind(1) | key_id(4) | u32 length(4)
    cases: list[tuple[str, bytes, str, Addr]] = [
        ("flipped byte in the KEM ciphertext", _flip(env, enc_offset + 100), "decrypt", RECIPIENT),
        ("flipped byte in the AEAD ciphertext", _flip(env, len(env) - 40), "decrypt", RECIPIENT),
        ("key_id changed (no such key)", _flip(env, 10), "unknown_key", RECIPIENT),
        ("truncated by one byte", env[:-1], "malformed", RECIPIENT),
        ("one trailing byte", env + b"\x00", "malformed", RECIPIENT),
        (
            "oversized hpke_ct length",
            env[:11] + b"\xff\xff\xff\xff" + env[15:],
            "malformed",
            RECIPIENT,
        ),
        ("bad magic", _with_u16(env, 0, 0x4D45), "header", RECIPIENT),
        ("Chain type in a Seal", env[:3] + b"\x02" + env[4:], "header", RECIPIENT),
        ("unknown suite 0x0004", _with_u16(env, 4, 0x0004), "suite", RECIPIENT),
        ("key_kind 3", env[:6] + b"\x03" + env[7:], "key_kind", RECIPIENT),
        ("opened by another device (wrong recipient)", env, "decrypt", OTHER),
    ]
    cases.append(("suite rewritten to test suite 0x0001", _with_u16(env, 4, 1), "suite", RECIPIENT))
    if suite_id == 3:
        # The suite-2 key is found but belongs to another suite.
        cases.append(("suite rewritten to 0x0002", _with_u16(env, 4, 2), "key_suite", RECIPIENT))
    else:
        # Too short to hold a suite-3 KEM ciphertext (1665 bytes).
        cases.append(("suite rewritten to 0x0003", _with_u16(env, 4, 3), "malformed", RECIPIENT))
    return [
        {
            "name": f"seal suite {suite_id}: {name}",
            "kind": "seal",
            "suite": suite_id,
            "me": addr_json(me),
            "hex": data.hex(),
            "reason": reason,
        }
        for name, data, reason, me in cases
    ]


def _chain_must_fail(suite_id: int, env: bytes) -> list[dict[str, Any]]:
    n_offset = 6 + 16
    cases: list[tuple[str, bytes, str]] = [
        ("flipped byte in the AEAD ciphertext", _flip(env, len(env) - 40), "decrypt"),
        ("flipped byte in the tag", _flip(env, len(env) - 1), "decrypt"),
        (
            "index n+1 (different key)",
            env[:n_offset] + (CHAIN_N + 1).to_bytes(4, "big") + env[n_offset + 4 :],
            "decrypt",
        ),
        (
            "index below the chain start",
            env[:n_offset] + (CHAIN_N - 1).to_bytes(4, "big") + env[n_offset + 4 :],
            "replay",
        ),
        (
            "index 1,001 ahead",
            env[:n_offset] + (CHAIN_N + 1001).to_bytes(4, "big") + env[n_offset + 4 :],
            "too_far",
        ),
        ("flipped chain_id", _flip(env, 6), "chain_id"),
        ("truncated by one byte", env[:-1], "malformed"),
        ("one trailing byte", env + b"\x00", "malformed"),
        ("suite rewritten", _with_u16(env, 4, 3 if suite_id == 2 else 2), "suite"),
        ("Seal type in a Chain", env[:3] + b"\x01" + env[4:], "header"),
        (
            "CHAIN_DIST content inside a Chain",
            _chain_envelope(suite_id, ContentType.CHAIN_DIST),
            "content_type",
        ),
        (
            "sender is not the chain owner",
            _chain_envelope(suite_id, sender=OTHER, sender_dk_seed=OTHER_DK_SEED),
            "sender",
        ),
    ]
    return [
        {
            "name": f"chain suite {suite_id}: {name}",
            "kind": "chain",
            "suite": suite_id,
            "hex": data.hex(),
            "reason": reason,
        }
        for name, data, reason in cases
    ]


def vectors() -> dict[str, Any]:
    """All vectors of this module as a JSON-ready dict."""
    kem_keys = []
    for suite_id, seed in KEM_SEEDS.items():
        _, public = suites.kem_keypair_from_seed(suites.ALL_SUITES[suite_id], seed)
        kem_keys.append({"suite": suite_id, "seed": seed.hex(), "public": public.hex()})

    steps = []
    ck = CK0
    for n in range(3):
        mk, next_ck = chain.chain_step(ck)
        steps.append({"n": n, "ck": ck.hex(), "mk": mk.hex(), "ck_next": next_ck.hex()})
        ck = next_ck

    mk5, _ = chain.chain_step(CHAIN_CK_N)
    chain_keys = []
    for suite_id in (1, 2, 3):
        suite = suites.ALL_SUITES[suite_id]
        key, nonce = chain.message_key_nonce(suite, mk5, CHAIN_ID)
        chain_keys.append(
            {
                "suite": suite_id,
                "mk": mk5.hex(),
                "salt": CHAIN_ID.hex(),
                "info": (chain.CHAIN_MSG_LABEL + suite_id.to_bytes(2, "big")).hex(),
                "key": key.hex(),
                "nonce": nonce.hex(),
            }
        )

    dist = _chain_dist()
    opened_conv = {
        "conv_id": CONV_ID.hex(),
        "epoch": EPOCH,
        "sender": addr_json(SENDER),
        "ts_ms": TS_MS,
        "msg_id": MSG_ID.hex(),
        "kvd": KVD.hex(),
        "content_type": int(ContentType.TEXT),
        "content": TEXT.hex(),
        "chain_id": CHAIN_ID.hex(),
        "n": CHAIN_N,
    }
    chain_envelopes = []
    must_fail: list[dict[str, Any]] = []
    for suite_id in (1, 2, 3):
        env = _chain_envelope(suite_id)
        chain_envelopes.append(
            {
                "suite": suite_id,
                "owner": addr_json(SENDER),
                "dk_seed": SENDER_DK_SEED.hex(),
                "dk_public": dk_public(SENDER_DK_SEED).hex(),
                "chain_dist": dist.encode().hex(),
                "mk": mk5.hex(),
                "envelope": env.hex(),
                "opened": opened_conv,
            }
        )
        if suite_id != 1:
            must_fail += _chain_must_fail(suite_id, env)

    seals = []
    for suite_id in (1, 2, 3):
        _, public = suites.kem_keypair_from_seed(suites.ALL_SUITES[suite_id], KEM_SEEDS[suite_id])
        env_hex = SEAL_ENVELOPES[suite_id]
        seals.append(
            {
                "suite": suite_id,
                "sender_dk_seed": SENDER_DK_SEED.hex(),
                "sender_dk_public": dk_public(SENDER_DK_SEED).hex(),
                "recipient": addr_json(RECIPIENT),
                "recipient_kem_seed": KEM_SEEDS[suite_id].hex(),
                "recipient_kem_public": public.hex(),
                "envelope": env_hex,
                "opened": {
                    "sender": addr_json(SENDER),
                    "recipient": addr_json(RECIPIENT),
                    "ts_ms": TS_MS,
                    "msg_id": MSG_ID.hex(),
                    "content_type": int(ContentType.TEXT),
                    "content": TEXT.hex(),
                    "key_kind": SEAL_KEY_KIND,
                    "key_id": SEAL_KEY_ID,
                },
            }
        )
        if suite_id != 1:
            must_fail += _seal_must_fail(suite_id, bytes.fromhex(env_hex))

    return {
        "kem_keys": kem_keys,
        "chain_kdf": steps,
        "chain_keys": chain_keys,
        "chain_envelopes": chain_envelopes,
        "seals": seals,
        "must_fail": must_fail,
    }


# -- checking ----------------------------------------------------------------------------


def _open_seal_vector(v: dict[str, Any], data: bytes, me: Addr) -> seal.OpenedSeal:
    suite_id = v["suite"]
    private, _ = suites.kem_keypair_from_seed(
        suites.ALL_SUITES[suite_id], bytes.fromhex(v["recipient_kem_seed"])
    )
    sender_dk = bytes.fromhex(v["sender_dk_public"])
    sender = addr_from_json(v["opened"]["sender"])

    def lookup(_suite: int, kind: int, key_id: int) -> suites.KemPrivateKey | None:
        return (
            private if (kind, key_id) == (v["opened"]["key_kind"], v["opened"]["key_id"]) else None
        )

    return seal.open_seal(
        data,
        me,
        lookup,
        lambda a: sender_dk if a == sender else None,
        allow_test_suites=suite_id == 1,
    )


def _receiving_chain(v: dict[str, Any]) -> chain.ReceivingChain:
    return chain.ReceivingChain.from_dist(
        chain.ChainDist.decode(bytes.fromhex(v["chain_dist"])),
        addr_from_json(v["owner"]),
        v["suite"],
        allow_test_suites=v["suite"] == 1,
    )


def _opened_json(o: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(o):
        value = getattr(o, f.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, Addr):
            value = addr_json(value)
        out[f.name] = value
    return out


def check(v: dict[str, Any]) -> None:
    """Verify every vector in ``v`` against the library; AssertionError on a mismatch."""
    for k in v["kem_keys"]:
        suite = suites.ALL_SUITES[k["suite"]]
        _, public = suites.kem_keypair_from_seed(suite, bytes.fromhex(k["seed"]))
        assert public.hex() == k["public"], f"KEM public key of suite {k['suite']}"
        suites.kem_public_from_bytes(suite, public)

    for step in v["chain_kdf"]:
        mk, next_ck = chain.chain_step(bytes.fromhex(step["ck"]))
        assert (mk.hex(), next_ck.hex()) == (step["mk"], step["ck_next"]), f"KDF step {step['n']}"
    for a, b in zip(v["chain_kdf"], v["chain_kdf"][1:], strict=False):
        assert a["ck_next"] == b["ck"], "KDF steps are not consecutive"

    for k in v["chain_keys"]:
        suite = suites.ALL_SUITES[k["suite"]]
        assert k["info"] == (chain.CHAIN_MSG_LABEL + k["suite"].to_bytes(2, "big")).hex()
        key, nonce = chain.message_key_nonce(
            suite, bytes.fromhex(k["mk"]), bytes.fromhex(k["salt"])
        )
        assert (key.hex(), nonce.hex()) == (k["key"], k["nonce"]), f"chain keys suite {k['suite']}"

    for c in v["chain_envelopes"]:
        suite = suites.ALL_SUITES[c["suite"]]
        dist = chain.ChainDist.decode(bytes.fromhex(c["chain_dist"]))
        assert dist.encode().hex() == c["chain_dist"]
        assert chain.chain_step(dist.ck)[0].hex() == c["mk"]
        # Encrypting the same message again gives the same bytes (Ed25519 and AEAD are
        # deterministic): this pins the exact layout, not just "it decrypts".
        sending = chain.SendingChain(
            suite=suite,
            owner=addr_from_json(c["owner"]),
            conv_id=dist.conv_id,
            epoch=dist.epoch,
            chain_id=dist.chain_id,
            ck=dist.ck,
            created_ms=0,
            n=dist.n,
            start_n=dist.n,
            prev_chain_id=dist.prev_chain_id,
            prev_final_n=dist.prev_final_n,
        )
        o = c["opened"]
        again = sending.encrypt(
            dk(bytes.fromhex(c["dk_seed"])),
            o["ts_ms"],
            bytes.fromhex(o["msg_id"]),
            bytes.fromhex(o["kvd"]),
            o["content_type"],
            bytes.fromhex(o["content"]),
        )
        assert again.hex() == c["envelope"], f"Chain envelope of suite {c['suite']}"
        opened = _receiving_chain(c).decrypt(
            bytes.fromhex(c["envelope"]), bytes.fromhex(c["dk_public"]), now_ms=0
        )
        assert _opened_json(opened) == o, f"opened Chain of suite {c['suite']}"

    for s in v["seals"]:
        opened = _open_seal_vector(s, bytes.fromhex(s["envelope"]), addr_from_json(s["recipient"]))
        got = _opened_json(opened)
        assert got.pop("suite") == s["suite"]
        assert got == s["opened"], f"opened Seal of suite {s['suite']}"

    seal_by_suite = {s["suite"]: s for s in v["seals"]}
    chain_by_suite = {c["suite"]: c for c in v["chain_envelopes"]}
    for m in v["must_fail"]:
        data = bytes.fromhex(m["hex"])
        try:
            if m["kind"] == "seal":
                _open_seal_vector(seal_by_suite[m["suite"]], data, addr_from_json(m["me"]))
            else:
                c = chain_by_suite[m["suite"]]
                _receiving_chain(c).decrypt(data, bytes.fromhex(c["dk_public"]), now_ms=0)
        except E2EError as exc:
            assert str(exc) == "cannot open envelope", m["name"]
            assert exc.reason == m["reason"], f"{m['name']}: reason {exc.reason}"
        else:
            raise AssertionError(f"must_fail vector was accepted: {m['name']}")


if __name__ == "__main__":  # print fresh SEAL_ENVELOPES constants
    for suite_id, hex_ in make_seal_envelopes().items():
        print(f"    {suite_id}: (")
        for i in range(0, len(hex_), 88):
            print(f'        "{hex_[i : i + 88]}"')
        print("    ),")
    sys.exit(0)
