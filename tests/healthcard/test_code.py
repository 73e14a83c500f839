"""The code format on its own (no database): round trips with both algorithms, size, tampering,
validity, unknown keys; PNG → a real decoder (zxing-cpp) → offline verification with the trust list only."""

from __future__ import annotations

import io
import json
import os
import time

import pytest
import segno
import zxingcpp
from gmssl import sm2 as gmssl_sm2
from PIL import Image

from smartcare.healthcard import code as qr
from smartcare.healthcard.render import png
from smartcare.platform.crypto import ED25519, SM2, SigningKey, VerifyKey

ALGS = (ED25519, SM2)


def _issuer(alg: str) -> tuple[bytes, SigningKey, dict]:
    key, kid = SigningKey.generate(alg), os.urandom(qr.KID_BYTES)
    published = json.dumps(qr.TrustList.document([(kid, key.verify_key, "active")], issuer="test"))
    return kid, key, json.loads(published)


def _code(kid: bytes, *, payments: int = 4, now: int | None = None, seconds: int = 60, kind=qr.Kind.DYNAMIC) -> qr.Code:
    now = int(time.time()) if now is None else now
    templates = [qr.Template(qr.App.HEALTH_CARD, 500000)]
    shapes = {"wechat": 134567890123456789, "alipay": 284567890123456789, "unionpay": 6234567890123456789,
              "ecny": 8834567890123456789}
    templates += [qr.Template(qr.PAYMENT_APPS[ch], token) for ch, token in list(shapes.items())[:payments]]
    return qr.Code(kid, os.urandom(qr.TOKEN_BYTES), now, now + seconds, os.urandom(qr.NONCE_BYTES), kind, tuple(templates))


@pytest.mark.parametrize("alg", ALGS)
def test_round_trip_and_qr_version_with_four_payment_templates(alg):
    kid, key, published = _issuer(alg)
    original = _code(kid)
    text = qr.encode(original, key)
    assert text.startswith("EHC1:") and set(text) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    symbol = segno.make_qr(text, error="q", boost_error=False)
    assert symbol.mode == "alphanumeric" and symbol.version <= 11, (len(text), symbol.version)
    decoded = qr.verify(text, qr.TrustList.from_json(published))
    assert decoded == original
    assert decoded.payments == {"wechat": 134567890123456789, "alipay": 284567890123456789,
                                "unionpay": 6234567890123456789, "ecny": 8834567890123456789}


@pytest.mark.parametrize("alg", ALGS)
def test_png_decodes_with_zxing_and_verifies_with_only_the_trust_list(alg):
    kid, key, published = _issuer(alg)
    text = qr.encode(_code(kid), key)
    image = Image.open(io.BytesIO(png(text)))
    results = zxingcpp.read_barcodes(image)
    assert len(results) == 1 and results[0].format == zxingcpp.BarcodeFormat.QRCode
    assert results[0].text == text
    assert results[0].ec_level == "Q" and int(results[0].extra["Version"]) <= 11
    trust = qr.TrustList.from_json(json.dumps(published))  # as a terminal downloads it, nothing else
    assert qr.verify(results[0].text, trust).card_token


@pytest.mark.parametrize("alg", ALGS)
def test_tampering_any_byte_fails(alg):
    kid, key, published = _issuer(alg)
    text = qr.encode(_code(kid, payments=2), key)
    trust = qr.TrustList.from_json(published)
    raw = qr.base45.b45decode(text[len(qr.PREFIX):])
    seen = set()
    for i in range(len(raw)):
        for flip in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[i] ^= flip
            forged = qr.PREFIX + qr.base45.b45encode(bytes(tampered)).decode()
            with pytest.raises(qr.CodeError) as err:
                qr.verify(forged, trust)
            seen.add(err.value.code)
    assert seen <= {"code_malformed", "code_forged", "code_unknown_key"} and "code_forged" in seen
    # and in the text itself: any other character of the alphabet in any position
    for i in range(len(qr.PREFIX), len(text)):
        swapped = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:]
        with pytest.raises(qr.CodeError):
            qr.verify(swapped, trust)


def test_expired_not_yet_valid_and_unknown_key_have_their_own_errors():
    kid, key, published = _issuer(ED25519)
    trust = qr.TrustList.from_json(published)
    now = int(time.time())
    text = qr.encode(_code(kid, now=now, seconds=60), key)
    assert qr.verify(text, trust, now=now + 60)
    with pytest.raises(qr.CodeError) as err:
        qr.verify(text, trust, now=now + 61)
    assert err.value.code == "code_expired"
    with pytest.raises(qr.CodeError) as err:
        qr.verify(text, trust, now=now - 600)
    assert err.value.code == "code_not_yet_valid"
    other_kid, other_key, _ = _issuer(ED25519)
    with pytest.raises(qr.CodeError) as err:
        qr.verify(qr.encode(_code(other_kid), other_key), trust)
    assert err.value.code == "code_unknown_key"
    # a key id we trust but a signature by another key: forged, not unknown
    with pytest.raises(qr.CodeError) as err:
        qr.verify(qr.encode(_code(kid), other_key), trust)
    assert err.value.code == "code_forged"
    for junk in ("", "HC1:NCFOXN", "EHC2:ABC", "EHC1:", "EHC1:!!!"):
        with pytest.raises(qr.CodeError) as err:
            qr.verify(junk, trust)
        assert err.value.code == "code_malformed"


def test_static_code_cannot_carry_payment_templates():
    kid, key, _ = _issuer(ED25519)
    with pytest.raises(ValueError, match="static"):
        qr.encode(_code(kid, kind=qr.Kind.STATIC), key)
    assert qr.encode(_code(kid, payments=0, kind=qr.Kind.STATIC), key)


def test_sm2_signatures_interoperate_with_an_independent_implementation():
    """Our SM2 (Tongsuo) against the pure-Python gmssl: each verifies the other's signatures over the
    exact bytes a code signs (SM3 with the default user id 1234567812345678)."""
    key = SigningKey.generate(SM2)
    public = key.verify_key.public
    other = gmssl_sm2.CryptSM2(private_key=key.private.hex(), public_key=public[1:].hex())
    message = b"EHC1:" + os.urandom(40)
    ours = key.sign(message)
    assert other.verify_with_sm3(ours.hex(), message)
    theirs = bytes.fromhex(other.sign_with_sm3(message))
    assert VerifyKey(SM2, public).verify(theirs, message)
    assert not VerifyKey(SM2, public).verify(theirs, message + b"x")


def test_one_text_per_code_and_no_payment_templates_in_a_static_code():
    kid, key, published = _issuer(ED25519)
    trust = qr.TrustList.from_json(published)
    raw = qr.base45.b45decode(qr.encode(_code(kid, payments=1), key)[len(qr.PREFIX):])
    assert raw[0] == 0x83  # a list of three
    longer = b"\x98\x03" + raw[1:]  # the same list with a non-shortest length: same content, another text
    with pytest.raises(qr.CodeError) as err:
        qr.verify(qr.PREFIX + qr.base45.b45encode(longer).decode(), trust)
    assert err.value.code == "code_malformed"

    now = int(time.time())
    body = qr.cbor2.dumps([os.urandom(qr.TOKEN_BYTES), now, now + 60, os.urandom(qr.NONCE_BYTES), int(qr.Kind.STATIC),
                           [[1, 500000], [11, 134567890123456789]]])
    signature = key.sign(qr.PREFIX.encode() + kid + body)  # properly signed, but a static code may not pay
    with pytest.raises(qr.CodeError) as err:
        qr.verify(qr.PREFIX + qr.base45.b45encode(qr.cbor2.dumps([kid, body, signature])).decode(), trust)
    assert err.value.code == "code_malformed" and "static" in err.value.message


def test_a_trust_list_with_a_key_this_verifier_does_not_know_still_loads():
    kid, key, published = _issuer(ED25519)
    published["keys"].append({"kty": "RSA", "kid": "00112233", "n": "x", "e": "AQAB", "use": "sig"})
    assert set(qr.TrustList.from_json(published).keys) == {kid}
