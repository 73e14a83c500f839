"""The generated secret key: made once, the same for every process of one home, readable only by its owner."""

from __future__ import annotations

import stat
import subprocess
import sys

from smartcare.platform.settings import _secret_in


def test_processes_starting_together_agree_on_one_generated_secret(tmp_path):
    code = "import sys; from pathlib import Path; from smartcare.platform.settings import _secret_in; print(_secret_in(Path(sys.argv[1])))"
    starters = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
                for _ in range(8)]
    secrets = {p.communicate(timeout=60)[0].strip() for p in starters}
    assert all(p.returncode == 0 for p in starters)
    assert len(secrets) == 1 and len(secrets.pop()) >= 48
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no drafts left behind
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    assert _secret_in(tmp_path) == (tmp_path / "secret.key").read_text().strip()
