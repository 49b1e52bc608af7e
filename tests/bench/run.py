#!/usr/bin/env python
"""Run benchmark workloads, keep each run's figures, print them as a table.

    python tests/bench/run.py [--workloads postgres,mariadb] [--list] [-- extra args for the workloads]

Each workload is ``tests/bench/<name>.py`` run as its own process with ``--json <file>`` (so a crash or
a leak in one does not disturb the others). The merged result goes to
``tests/bench/results/<YYYY-MM-DD_HHMM>_<machine>.json``: date, command, machine, and per workload its
JSON (figures with their ceilings and ratios). Exit status 1 when a workload failed.

Add a workload: create ``tests/bench/<name>.py`` taking ``--json PATH`` and list it in ``WORKLOADS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

WORKLOADS: dict[str, str] = {
    "postgres": "Postgres source: snapshot, stream backlog, latency (peer workloads of shared/peers)",
    "mariadb": "MariaDB/MySQL source: snapshot and stream backlog",
    "iceberg": "Postgres -> Iceberg end to end",
}
DEFAULT = list(WORKLOADS)  # every workload: `make bench` reports all the peer figures


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    return info


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    rows = [("workload", "figure", "value", "unit", "ceiling", "ratio", "target", "met")]
    for name, data in results.items():
        if not isinstance(data, dict):
            continue
        if "error" in data:
            rows.append((name, "FAILED", data["error"][-60:], "", "", "", "", ""))
            continue
        figures = data.get("figures")
        if figures:
            for f in figures:
                target = f.get("target")
                target_text = "-" if target is None else (">= " if f.get("higher_is_better", True) else "<= ") + _fmt(target)
                rows.append((name, f["name"], _fmt(f["value"]), f.get("unit", ""), _fmt(f.get("ceiling")), _fmt(f.get("ratio")), target_text, _fmt(f.get("meets_target"))))
        else:  # a workload without the figure list: show its top-level numbers
            for key, value in data.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append((name, key, _fmt(float(value)), "", "", "", "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=os.environ.get("BENCH_WORKLOADS", ",".join(DEFAULT)), help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    ap.add_argument("--out", type=Path, default=None, help="result file (default tests/bench/results/<date>_<machine>.json)")
    ap.add_argument("extra", nargs="*", help="arguments passed to every workload (after --)")
    a = ap.parse_args()
    if a.list:
        for name, text in WORKLOADS.items():
            print(f"{name:10} {text}{'' if (BENCH / (name + '.py')).exists() else '  (not present)'}")
        return 0
    names = [n.strip() for n in a.workloads.split(",") if n.strip()]
    unknown = [n for n in names if not (BENCH / f"{n}.py").exists()]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}; present: {', '.join(p.stem for p in sorted(BENCH.glob('*.py')) if p.stem in WORKLOADS)}", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result: dict[str, Any] = {"date": started, "command": " ".join(["python tests/bench/run.py", *sys.argv[1:]]), "machine": machine(), "workloads": {}}
    failed = False
    for name in names:
        print(f"=== {name}: {WORKLOADS.get(name, '')}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"zetl-bench-{name}-") as tmp:
            out = Path(tmp) / "result.json"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--json", str(out), *a.extra])
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0 or not out.exists():
                failed = True
                result["workloads"][name] = {"error": f"exit status {proc.returncode}", "seconds": round(elapsed, 1)}
                continue
            data = json.loads(out.read_text())
            data["seconds"] = round(elapsed, 1)
            result["workloads"][name] = data
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = a.out or RESULTS / f"{time.strftime('%Y-%m-%d_%H%M', time.gmtime())}_{socket.gethostname()}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(table(result["workloads"]))
    print(f"\nresults: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
