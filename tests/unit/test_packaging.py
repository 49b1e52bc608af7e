"""Packaging: the wheel's top-level packages, import hygiene, plugin discovery."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ("psycopg", "pymysql", "pymysqlreplication", "pyiceberg", "redshift_connector", "boto3", "botocore", "opensearchpy", "pyarrow", "duckdb")


@pytest.mark.slow
def test_wheel_top_level_packages_are_exactly_ours(tmp_path: Path) -> None:
    # build from a copy: a build in the working tree leaves build/ behind, whose stale files
    # could end up in a later wheel, and two runs at once would share it
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".zetl", "tests", "bench"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(tree)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("zetl-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = next(n for n in names if n.endswith("top_level.txt"))
        assert sorted(zf.read(top_level).decode().split()) == ["zetl", "zetl_connectors", "zetl_sinks"]
        roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
        assert roots == {"zetl", "zetl_connectors", "zetl_sinks"}
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = zf.read(entry_points).decode()
        assert "[zetl.sources]" in text and "[zetl.sinks]" in text and "zetl = zetl.cli:main" in text


def test_importing_zetl_imports_no_driver() -> None:
    code = "import sys, zetl, zetl.cli, zetl.config, zetl.runner, zetl.daemon, zetl_connectors, zetl_sinks; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in %r)))" % (DRIVERS,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_plugins_command_lists_the_test_plugins() -> None:
    proc = subprocess.run([sys.executable, "-m", "zetl.cli", "plugins", "--format", "json"], capture_output=True, text=True, check=True)
    import orjson

    entries = {(e["kind"], e["type"]): e for e in orjson.loads(proc.stdout)}
    assert {("source", "memory"), ("sink", "memory"), ("sink", "file")} <= set(entries)
    assert entries[("sink", "file")]["installed"] and "path* (str)" in entries[("sink", "file")]["keys"]


def test_missing_extra_gives_an_install_hint(tmp_path: Path) -> None:
    from zetl.errors import NotInstalledError
    from zetl.plugin import require
    from zetl.registry import check_installed
    from zetl.sink import Sink

    class NeedsDriver(Sink):  # type: ignore[type-arg]
        name = "iceberg"
        requires = ("zetl_no_such_driver",)
        extra = "iceberg"

    with pytest.raises(NotInstalledError, match=r"Iceberg sink not installed: pip install 'zetl\[iceberg\]'"):
        check_installed(NeedsDriver)
    with pytest.raises(NotInstalledError, match=r"Redshift sink not installed: pip install 'zetl\[redshift\]'"):
        require("zetl_no_such_driver", extra="redshift", what="Redshift sink")
