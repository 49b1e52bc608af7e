"""`make demo` (zetl/demo.py) runs end to end: Postgres -> Iceberg while the source changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zetl.config.load import load_integrations

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_demo_script_replicates_and_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "ZETL_DEMO_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "zetl.demo"], env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "initial snapshot: Iceberg equals Postgres" in out
    assert "changes while running: Iceberg equals Postgres" in out
    assert "Iceberg table shop.customers: 201 rows" in out and "loyalty_tier" in out
    warehouse = tmp_path / "demo" / "shop-to-iceberg" / "iceberg" / "warehouse"
    assert list(warehouse.rglob("*.parquet")), "the tables' data files are in the local warehouse"
    # The config the demo writes is the one committed in configs/ and is valid.
    written = (tmp_path / "configs" / "demo.yaml").read_text()
    assert written == (ROOT / "configs" / "demo.yaml").read_text()
    assert len(load_integrations([tmp_path / "configs" / "demo.yaml"])) == 1
