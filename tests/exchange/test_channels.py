"""Channels are data: YAML round trip, every change a version with a diff, rollback, stop/start."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from smartcare.exchange import channels
from smartcare.platform.db import session_scope
from smartcare.platform.errors import InvalidInput


def _cli(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smartcare.cli", *args], input=stdin, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)


def test_yaml_round_trip_versions_and_rollback(database_url):
    cid = f"lab-{uuid.uuid4().hex[:6]}"
    yaml_v1 = f"""
id: {cid}
name: 检验结果
source: hl7v2
connectors: [mllp]
accept: ["ORU^R01"]
destinations:
  - name: event-log
    kind: log
    topics: ["lab.*"]
retry: {{max_attempts: 4, backoff_seconds: 10}}
retention_days: 90
"""
    r = _cli("channels", "import", "-", "--comment", "first", stdin=yaml_v1)
    assert r.returncode == 0, r.stderr
    exported = _cli("channels", "export", cid).stdout
    assert channels.from_yaml(exported)[0] == channels.from_yaml(yaml_v1)[0]
    # importing the export again changes nothing: no new version
    assert _cli("channels", "import", "-", stdin=exported).returncode == 0

    changed = exported.replace("retention_days: 90", "retention_days: 30")
    assert _cli("channels", "import", "-", "--comment", "shorter retention", stdin=changed).returncode == 0
    with session_scope() as s:
        history = channels.versions(s, cid)
    assert [v.version for v in history] == [2, 1]
    assert history[0].comment == "shorter retention" and history[0].changed_by == "cli"
    assert "-retention_days: 90" in history[0].diff and "+retention_days: 30" in history[0].diff

    assert _cli("channels", "rollback", cid, "--version", "1").returncode == 0
    with session_scope() as s:
        current = channels.get(s, cid)
        assert current.version == 3 and current.config["retention_days"] == 90
        assert channels.versions(s, cid)[0].comment == "rollback to v1"
    assert "v3" in _cli("channels", "history", cid).stdout


def test_bad_channel_yaml_names_the_field(database_url):
    with pytest.raises(InvalidInput, match=r"destinations\.0: .*needs a url"):
        channels.from_yaml("id: x1\nname: x\nsource: fhir\nconnectors: [http]\n"
                           "destinations: [{name: out, kind: webhook}]\n")
    with pytest.raises(InvalidInput, match="source"):
        channels.from_yaml("id: x2\nname: x\nsource: dicom\nconnectors: [http]\n")
    r = _cli("channels", "import", "-", stdin="id: [unclosed\n")
    assert r.returncode == 2 and "malformed" in r.stderr


def test_stopped_channel_refuses_then_accepts(client, hospital, residents):
    from tests.exchange.conftest import adt, msa, signed_post

    headers = {"Authorization": "Bearer " + client.post("/api/v1/auth/token", json={
        "username": "admin", "password": "smartcare-admin"}).json()["access_token"]}
    assert client.post("/api/v1/exchange/channels/hl7v2/stop", headers=headers).json()["enabled"] is False
    try:
        import time

        time.sleep(2.1)  # the hub's channel cache refreshes every 2 s
        body = adt(hospital[0], f"S{uuid.uuid4().hex[:10]}", residents[7]).encode()
        r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", body, "text/plain")
        assert r.status_code == 400 and msa(r.text)[1] == "AR" and "stopped" in r.text
    finally:
        client.post("/api/v1/exchange/channels/hl7v2/start", headers=headers)
    time.sleep(2.1)
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", body, "text/plain")
    assert r.status_code == 200 and msa(r.text)[1] == "AA"
