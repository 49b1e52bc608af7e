"""Guard tests: one invalid integration file per error message, each message checked exactly.

Each file under tests/configs/invalid/ ends with the messages it must produce, as comments:
``# error: {file}:line:col  path: message`` and, for errors that have one, ``# hint: ...``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from zetl.config.load import load_integrations
from zetl.errors import ConfigError

HERE = Path(__file__).resolve().parent.parent / "configs"
CASES = sorted((HERE / "invalid").glob("*.yaml"))


def _expected(path: Path) -> tuple[list[str], list[str]]:
    errors, hints = [], []
    for line in path.read_text().splitlines():
        if m := re.match(r"# error: (.*)$", line):
            errors.append(m.group(1).replace("{file}", str(path)))
        elif m := re.match(r"# hint: (.*)$", line):
            hints.append(m.group(1))
    return errors, hints


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_invalid_config_reports_exact_messages(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZETL_GUARD_TEST_UNSET", raising=False)
    errors, hints = _expected(path)
    assert errors, f"{path.name} declares no expected error"
    with pytest.raises(ConfigError) as caught:
        load_integrations([path])
    got_errors = [str(i).split("\n")[0] for i in caught.value.issues]
    got_hints = [i.hint for i in caught.value.issues if i.hint and not i.hint.startswith("installed ")]
    assert got_errors == errors
    assert got_hints == hints


def test_duplicate_integration_names_across_files() -> None:
    folder = HERE / "duplicate_names"
    with pytest.raises(ConfigError) as caught:
        load_integrations([folder])
    assert [str(i).split("\n")[0] for i in caught.value.issues] == [
        f"{folder / 'b.yaml'}:2:7  name: integration name 'same-name' is already used in {folder / 'a.yaml'}:1"
    ]


def test_unknown_plugin_hint_lists_installed_plugins() -> None:
    with pytest.raises(ConfigError) as caught:
        load_integrations([HERE / "invalid" / "unknown_sink_type.yaml"])
    hint = caught.value.issues[0].hint or ""
    assert hint.startswith("installed sinks: ") and "memory" in hint and "file" in hint


def test_cli_validate_prints_every_error_and_exits_2() -> None:
    path = HERE / "invalid" / "many_errors.yaml"
    proc = subprocess.run([sys.executable, "-m", "zetl.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    errors, _ = _expected(path)
    for line in errors:
        assert line in proc.stderr
    assert "4 errors found" in proc.stderr


def test_secrets_are_not_echoed(tmp_path: Path) -> None:
    # A value that fails validation under a secret-looking key is never printed back.
    path = tmp_path / "secret.yaml"
    path.write_text("name: s\nsource:\n  type: memory\n  password_hint: hunter2\nsink:\n  type: memory\n")
    with pytest.raises(ConfigError) as caught:
        load_integrations([path])
    assert "hunter2" not in str(caught.value)
