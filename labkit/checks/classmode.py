"""Class mode: check one cluster per student at once, write class.csv, class.xlsx and each student's HTML.

DIR holds one inventory per student, one subfolder each (the subfolder's name is the student's). Clusters are
checked in parallel, each with per-host SSH timeouts, so a student whose hosts are down costs one timeout, not
one per check. A student whose inventory cannot be read, or whose cluster does not answer, gets a row saying so;
so does a folder with a symbolic link out of it (`links_out`): it is not read at all.
The class files are written at the start (every student "not checked"), again at most every REWRITE seconds
as students finish, and at the end, also when the run is interrupted: a Ctrl-C leaves them whole, with who was
not checked; a run killed outright leaves them at most REWRITE seconds behind. Not after every student: one
write of class.xlsx takes 0.2 s for 30 students and 0.5 s for 200 here, so rewriting it per student cost
O(students^2) (about 50 s for 200) on the thread that collects results.

class.csv / the Class sheet: one row per student: student, status, score, percent, passed, failed, blocked,
seconds, shares hosts with (`shared_hosts`: other students whose inventories name a host address this one
names, with those addresses), then one column per check (`id@host`) with its outcome. class.xlsx adds a Summary
sheet (one row per student, with the first failure) and a Failures sheet (every failed check: expected, found,
hint).
"""

from __future__ import annotations

import csv
import io
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from labkit import LabkitError, backends, inventory
from labkit.checks import failed_report, grading, key, printable, report, run

FIXED = ["student", "status", "score", "percent", "passed", "failed", "blocked", "seconds", "shares hosts with"]
FILL = {"pass": "C6EFCE", "fail": "FFC7CE", "blocked": "D9D9D9"}
REWRITE = 10.0  # seconds at most between two writes of the class files while students finish


def students(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise LabkitError(f"{d}: not a directory of student inventories")
    found = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise LabkitError(f"{d}: no student inventory (one subfolder per student)")
    return found


def links_out(folder: Path) -> list[str]:
    """The symbolic links in a student's folder (at any depth) that lead out of it, as "NAME -> TARGET": Ansible
    follows them, and its parse errors quote what it read, so `hosts.yml -> /etc/shadow` or a link to the
    instructor's keys would put pieces of those files into the student's report."""
    root = Path(os.path.realpath(folder))
    found = []
    for p in sorted(folder.rglob("*")):  # realpath, not resolve(): a loop of links is no crash (Ansible says so)
        if p.is_symlink() and not Path(os.path.realpath(p)).is_relative_to(root):
            found.append(f"{p.relative_to(folder)} -> {p.readlink()}")
    return found


def check_student(path: Path, timeout: float | None, groups: dict[str, int] | None = None) -> dict:
    try:
        out = links_out(path)
        if out:
            raise LabkitError(f"{path}: links out of the student's folder, not read: {', '.join(out)}")
        inv = inventory.load(path)
        backends.preflight(inv)
    except LabkitError as exc:
        return failed_report(path, str(exc))
    try:
        return run(inv, timeout=timeout, groups=groups)
    except LabkitError as exc:  # an inventory that loads but says something wrong (labkit_check_timeout: abc)
        return failed_report(path, str(exc))
    except Exception as exc:  # noqa: BLE001 -- one student's crash must not end the class
        return failed_report(path, f"check crashed: {type(exc).__name__}: {exc}")


def shared_hosts(results: dict[str, dict]) -> dict[str, str]:
    """For each student whose inventory names a host address that another student's also names: those students
    and addresses ("bob: 10.77.1.10, 10.77.1.11"). Two students checked on the same machines get the same outcomes
    whoever did the work (a copied inventory), or disturb each other's runs (a typo): either way the instructor
    should know. An address is compared as the inventories write it."""
    by_address: dict[str, set[str]] = {}
    for name, r in results.items():
        for h in (r or {}).get("hosts", []):
            by_address.setdefault(h["address"], set()).add(name)
    shared = {}
    for name, r in results.items():
        others: dict[str, list[str]] = {}
        for h in (r or {}).get("hosts", []):
            for other in sorted(by_address[h["address"]] - {name}):
                others.setdefault(other, []).append(h["address"])
        if others:
            shared[name] = "; ".join(f"{printable(o)}: {', '.join(a)}" for o, a in others.items())
    return shared


def _row(name: str, r: dict | None, g: dict) -> dict:
    name = printable(name)  # a folder's name may hold anything a file name can
    if r is None:
        return {"student": name, "status": "not checked (run interrupted)"}
    s = grading.score(r, g)
    status = r["status"] + (f": {r['error']}" if r.get("error") else "")
    row = {"student": name, "status": status, "score": round(s["points"], 2), "percent": round(s["percent"], 1),
           "passed": r["counts"]["pass"], "failed": r["counts"]["fail"], "blocked": r["counts"]["blocked"],
           "seconds": r["seconds"]}
    row.update({key(c): c["outcome"] for c in r["checks"]})
    return row


def write_class(out: Path, names: list[str], results: dict[str, dict], g: dict) -> None:
    rows = [_row(n, results.get(n), g) for n in names]
    shared = shared_hosts(results)
    for n, row in zip(names, rows):
        if n in shared:
            row["shares hosts with"] = shared[n]
    columns: list[str] = []
    for n in names:
        for c in (results.get(n) or {}).get("checks", []):
            if key(c) not in columns:
                columns.append(key(c))
    header = FIXED + columns
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=header, restval="")
    w.writeheader()
    w.writerows(rows)
    report.save("--out", out / "class.csv", text.getvalue())
    _xlsx(out, header, rows, names, results)


def _xlsx(out: Path, header: list[str], rows: list[dict], names: list[str], results: dict[str, dict]) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Font, PatternFill

    wb = Workbook()
    ws = wb.active
    ws.title = "Class"
    ws.append(header)
    for row in rows:
        ws.append([row.get(h, "") for h in header])
    for cells in ws.iter_rows(min_row=2, min_col=len(FIXED) + 1):
        for cell in cells:
            if cell.value in FILL:
                cell.fill = PatternFill("solid", fgColor=FILL[cell.value])
    ws.freeze_panes = ws.cell(row=2, column=2)

    summary = wb.create_sheet("Summary")
    summary.append([*FIXED, "first failure"])
    for n, row in zip(names, rows):
        first = next((c for c in (results.get(n) or {}).get("checks", []) if c["outcome"] == "fail"), None)
        summary.append([row.get(h, "") for h in FIXED] +
                       [f"{key(first)}: {first['found']}" if first else (results.get(n) or {}).get("error", "")])

    failures = wb.create_sheet("Failures")
    failures.append(["student", "check", "host", "layer", "title", "expected", "found", "hint"])
    for n in names:
        r = results.get(n)
        if r is None:
            failures.append([printable(n), "", "", "", "not checked (run interrupted)", "", "", ""])
            continue
        if r.get("error"):
            failures.append([printable(n), "inventory", "", "", r["status"], "", r["error"], "fix the inventory"])
        for c in r["checks"]:
            if c["outcome"] == "fail":
                failures.append([printable(n), c["id"], c["host"], c["layer"], c["title"], c["expected"], c["found"],
                                 c["hint"]])
    for sheet in (ws, summary, failures):
        for cell in sheet[1]:
            cell.font = Font(bold=True)
    data = io.BytesIO()
    wb.save(data)
    report.save("--out", out / "class.xlsx", data.getvalue())


def run_class(directory: str | Path, out: str | Path, grading_file: str | Path | None = None,
              timeout: float | None = None, parallel: int = 10, echo=print, clock=time.monotonic) -> dict[str, dict]:
    """Check every student's cluster; write OUT/class.csv, OUT/class.xlsx and OUT/<student>.html."""
    g = grading.load(grading_file)
    paths = students(directory)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LabkitError(f"--out {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabkitError(f"--out {out}: cannot make the folder: {exc.strerror}") from None
    names = [p.name for p in paths]
    results: dict[str, dict] = {}
    write_class(out, names, results, g)
    written = clock()
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(paths))))
    futures = {pool.submit(check_student, p, timeout, g["groups"]): p.name for p in paths}
    try:
        pending, unwritten = set(futures), False
        while pending:
            due = max(0.0, REWRITE - (clock() - written)) if unwritten else None  # write results within REWRITE s
            done, pending = wait(pending, timeout=due, return_when=FIRST_COMPLETED)
            for f in done:
                name = futures[f]
                r = results[name] = f.result()
                report.save("--out", out / f"{name}.html", report.html_page(r, grading.score(r, g)))
                n = r["counts"]
                echo(f"{printable(name):20} {r['status']:18} {n['pass']} passed, {n['fail']} failed, "
                     f"{n['blocked']} blocked ({r['seconds']:.1f}s)" + (f": {r['error']}" if r.get("error") else ""))
                unwritten = True
            if unwritten and pending and clock() - written >= REWRITE:
                write_class(out, names, results, g)
                written, unwritten = clock(), False
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        write_class(out, names, results, g)
    shared = shared_hosts(results)
    for name in (n for n in names if n in shared):
        echo(f"{printable(name):20} shares hosts with {shared[name]}")
    return results
