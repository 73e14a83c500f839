"""The operator's health-card commands: keys, the trust list, offline verification of a code or a picture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import date

from smartcare.healthcard import keys, render, service
from smartcare.platform.db import session_scope
from tests.healthcard.card_support import new_id_number, new_phone


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smartcare.cli", "healthcard", *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_trust_list_and_offline_verification_of_text_and_picture(database_url, tmp_path):
    with session_scope() as s:
        card = service.issue(s, holder=f"c{uuid.uuid4().hex[:8]}", relation="self", name="曹操",
                             id_number=new_id_number(date(1955, 5, 5)), phone=new_phone(), actor="test")
        service.bind_channel(s, card=card, channel="ecny", actor="test")
        shown = service.dynamic_code(s, card=card)
    trust = tmp_path / "trust.json"
    made = _run("trust-list", "--out", str(trust))
    assert made.returncode == 0, made.stderr
    assert json.loads(trust.read_text())["keys"]
    ok = _run("verify", shown.text, "--trust-list", str(trust))
    assert ok.returncode == 0 and "valid code" in ok.stdout and "ecny" in ok.stdout, ok.stdout + ok.stderr
    picture = tmp_path / "code.png"
    picture.write_bytes(render.png(shown.text))
    assert _run("verify", f"@{picture}", "--trust-list", str(trust)).returncode == 0

    listed = _run("keys", "list")
    active = [line for line in listed.stdout.splitlines() if "active" in line]
    assert listed.returncode == 0 and len(active) == 1
    rotated = _run("keys", "rotate", "--alg", "SM2")
    assert rotated.returncode == 0 and "new active key" in rotated.stdout
    old_kid = active[0].split()[1] if active[0].startswith("│") else active[0].split()[0]
    withdrawn = _run("keys", "withdraw", old_kid, "--reason", "test")
    assert withdrawn.returncode == 0, withdrawn.stdout + withdrawn.stderr
    assert _run("trust-list", "--out", str(trust)).returncode == 0
    refused = _run("verify", shown.text, "--trust-list", str(trust))
    assert refused.returncode == 1 and "code_unknown_key" in refused.stderr
    not_hex = _run("keys", "withdraw", "zz", "--reason", "x")
    assert not_hex.returncode != 0 and "not hexadecimal" in not_hex.stderr
    _run("keys", "rotate", "--alg", "Ed25519")
    keys.ring.forget()  # this process cached the keys another process changed


def test_the_demo_resident_gets_a_card_and_a_childs_card_once(seeded):
    from smartcare import cli

    cli._demo_card()
    cli._demo_card()
    with session_scope() as s:
        held = service.held_cards(s, "resident")
        assert [r for _, r in held] == ["self", "guardian"]
        assert [b.channel for b in service.bindings(s, held[0][0])] == ["alipay", "wechat"]
