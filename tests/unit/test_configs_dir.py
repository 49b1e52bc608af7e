"""Every file in configs/ is a valid integration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from zetl.config.load import collect_files, load_integrations

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_every_config_file_is_valid() -> None:
    files = collect_files([CONFIGS])
    assert files, "configs/ holds example integrations"
    integrations = load_integrations(files)
    assert len(integrations) == len(files)


def test_zetl_validate_configs_dir() -> None:
    proc = subprocess.run([sys.executable, "-m", "zetl.cli", "validate", str(CONFIGS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout
