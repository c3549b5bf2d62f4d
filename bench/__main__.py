"""Run every benchmark and print one table: value, baseline measured in the same run, ratio, target.

    python -m bench            # full runs (1 GiB transfer, hundreds of laps, ...)
    python -m bench --quick    # small smoke versions
    python -m bench ring math  # only the modules whose name contains one of these words
    python -m bench --json
    python -m bench --out DIR  # where bench.json and bench.html go (default: reports/)
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

from labnodes import output

import bench
from bench import report

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def modules(words: list[str]) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    return [n for n in names if not words or any(w in n for w in words)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke versions")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=REPORTS, help="directory for bench.json and bench.html")
    parser.add_argument("only", nargs="*", help="run only benchmarks whose module name contains one of these")
    args = parser.parse_args(argv)

    rows, failed = [], []
    for name in modules(args.only):
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        try:
            rows += importlib.import_module(f"bench.{name}").run(quick=args.quick)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
    if args.json:
        output.as_json({"rows": rows, "failed": failed})
    else:
        output.table((report.cells(r) for r in rows), report.HEADER)
    json_path, html_path = report.write(rows, failed, args.out)
    print(f"bench: wrote {json_path} and {html_path}", file=sys.stderr)
    missed = [r["bench"] for r in rows if r.get("ok") is False]
    if failed or missed:
        print(f"bench: failed {failed}, missed targets {missed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
