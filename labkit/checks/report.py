"""Render a check report (labkit.checks.run's dict): console summary, JUnit XML, one self-contained HTML page.

The HTML page has no script and no external resource: a topology picture drawn as inline SVG from the report
(hosts with address and groups, the cluster network, the ring's arrows, each service coloured by its checks),
the checks by layer with host, outcome and message, the last ring trace and the Celery jobs per worker host.
"""

from __future__ import annotations

import html
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2

from labkit import LabkitError, write_atomic

COLOURS = {"pass": "#2e9e44", "fail": "#d0312d", "blocked": "#9a9a9a", "": "#9a9a9a"}
LABELS = {"pass": "PASS", "fail": "FAIL", "blocked": "BLOCKED"}
SERVICE_NAMES = {"redis": "Redis", "flower": "Flower", "nameserver": "name server", "celery": "Celery worker",
                 "ring": "ring node", "math": "math server", "file": "file server"}


def message(c: dict) -> str:
    if c["outcome"] == "blocked":
        return f"blocked by {c.get('blocked_by')}"
    if c["outcome"] == "fail":
        return f"expected {c['expected']}; found {c['found']}" + (f"; hint: {c['hint']}" if c.get("hint") else "")
    return c.get("found", "")


# --- files ---------------------------------------------------------------------------------------------------

def check_output(option: str, path: str | Path) -> None:
    """Refuse, before a check runs, a file that could not be written afterwards (its folder missing or read-only,
    the path a folder): one line naming the option, instead of a traceback once every host has been checked."""
    p = Path(path)
    if p.is_dir():
        raise LabkitError(f"{option} {p}: is a folder; give a file name")
    try:
        tempfile.TemporaryFile(dir=p.parent).close()  # unnamed where the file system can: nothing is left
    except OSError as exc:
        raise LabkitError(f"{option} {p}: cannot write in {p.parent}: {exc.strerror}") from None


def save(option: str, path: str | Path, data: str | bytes) -> None:
    """Write a report file whole or not at all (labkit.write_atomic); a failure is one line naming the option."""
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise LabkitError(f"{option} {path}: cannot write it: {exc.strerror}") from None


# --- console ---------------------------------------------------------------------------------------------------

def fault_line(f: dict) -> str:
    """One of labkit's own faults in force, as the reports show it (from a host's record: never trusted to be
    well formed; one odd record must not end a class run)."""
    try:
        until = time.strftime("%H:%M:%S", time.localtime(float(f["until"]))) if f.get("until") else "healed"
    except (TypeError, ValueError, OverflowError, OSError):
        until = repr(f.get("until"))
    return f"{f.get('kind')} on {f.get('host')}: {f.get('what')} (fault {f.get('id')}, until {until})"


def console(report: dict, score: dict | None = None) -> str:
    lines = [f"cluster {report['cluster']} ({report.get('backend') or '?'}, {report['inventory']})"]
    if report.get("error"):
        lines.append(f"  {report['status']}: {report['error']}")
    if report.get("faults"):
        lines.append("\nlabkit faults in force: failures below may be these (`fab heal` undoes them)")
        lines += [f"  FAULT   {fault_line(f)}" for f in report["faults"]]
    by_layer: dict[str, list] = {}
    for c in report["checks"]:
        by_layer.setdefault(c["layer"], []).append(c)
    for layer, checks in by_layer.items():
        n = {o: sum(c["outcome"] == o for c in checks) for o in LABELS}
        lines.append(f"\n{layer:8} {n['pass']} passed, {n['fail']} failed, {n['blocked']} blocked")
        for c in checks:
            if c["outcome"] == "fail":
                lines += [f"  FAIL    {c['id']} on {c['host']}: {c['title']}",
                          f"          expected: {c['expected']}", f"          found:    {c['found']}",
                          f"          hint:     {c['hint']}"]
        blocked: dict[str, list] = {}
        for c in checks:
            if c["outcome"] == "blocked":
                blocked.setdefault(c["blocked_by"], []).append(f"{c['id']}@{c['host']}")
        for by, names in blocked.items():
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            lines.append(f"  BLOCKED by {by}: {shown}")
    n = report["counts"]
    if report["status"] == "unreachable":
        lines.append(f"\ncluster {report['cluster']} is unreachable: no host answers SSH")
    if score:
        lines.append(f"\nscore {score['points']:g} / {score['max']:g} ({score['percent']:.0f}%)")
    tail = f"{n['pass']} passed in {report['seconds']:.1f}s"
    if n["fail"] or n["blocked"] or report.get("error"):
        tail = f"{report['status']}: {n['fail']} failed, {n['blocked']} blocked, " + tail
    lines.append("\n" + tail)
    return "\n".join(lines)


# --- JUnit ---------------------------------------------------------------------------------------------------

def junit(report: dict) -> bytes:
    """JUnit XML: one test case per check and host; blocked checks are skipped with the check that blocked them."""
    root = ET.Element("testsuites", name=f"labkit check {report['cluster']}")
    suites: dict[str, ET.Element] = {}
    for c in report["checks"]:
        if c["layer"] not in suites:
            suites[c["layer"]] = ET.SubElement(root, "testsuite", name=f"{report['cluster']}.{c['layer']}")
        case = ET.SubElement(suites[c["layer"]], "testcase", classname=f"{report['cluster']}.{c['id']}",
                             name=c["host"])
        if c["outcome"] == "fail":
            f = ET.SubElement(case, "failure", message=f"{c['host']}: {c['title']}: found {c['found']}")
            f.text = f"host: {c['host']}\nexpected: {c['expected']}\nfound: {c['found']}\nhint: {c['hint']}\n"
        elif c["outcome"] == "blocked":
            ET.SubElement(case, "skipped", message=f"blocked by {c['blocked_by']}")
    if report.get("error"):
        suite = ET.SubElement(root, "testsuite", name=f"{report['cluster']}.inventory")
        case = ET.SubElement(suite, "testcase", classname=f"{report['cluster']}.inventory", name="load")
        ET.SubElement(case, "error", message=report["error"])
    for s in root:
        s.set("tests", str(len(s)))
        s.set("failures", str(sum(1 for t in s if t.find("failure") is not None)))
        s.set("skipped", str(sum(1 for t in s if t.find("skipped") is not None)))
        s.set("errors", str(sum(1 for t in s if t.find("error") is not None)))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# --- topology picture ------------------------------------------------------------------------------------------

BOX_W, BOX_H, GAP = 170, 118, 30


def topology_svg(report: dict) -> str:
    """Hosts as boxes (name, address, groups, one coloured pill per service), the cluster network as a bus,
    and the ring as arrows from each ring host to its successor."""
    hosts = report["hosts"]
    ring = [h for h in report.get("ring", []) if any(x["name"] == h for x in hosts)]
    top = [h for h in hosts if h["name"] not in ring]
    bottom = [next(x for x in hosts if x["name"] == r) for r in ring]
    cols = max(len(top), len(bottom), 1)
    width = cols * (BOX_W + GAP) + GAP
    y_top, y_bus = 20, 20 + BOX_H + 40
    y_bot = y_bus + 40
    height = (y_bot + BOX_H + 70) if bottom else (y_bus + 30)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" font-family="sans-serif" role="img" aria-label="cluster topology">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#3b5998"/></marker></defs>']
    out.append(f'<line x1="{GAP / 2}" y1="{y_bus}" x2="{width - GAP / 2}" y2="{y_bus}" stroke="#555" '
               f'stroke-width="4"/><text x="{width - GAP / 2}" y="{y_bus + 16}" font-size="12" fill="#555" '
               f'text-anchor="end">cluster network '
               f'{html.escape(report.get("subnet") or "")}</text>')
    pos = {}

    def box(h, x, y, link_y):
        e = html.escape
        colour = COLOURS.get(h["ssh"], "#9a9a9a") if h["ssh"] != "pass" else "#3b5998"
        pos[h["name"]] = (x, y)
        out.append(f'<line x1="{x + BOX_W / 2}" y1="{link_y}" x2="{x + BOX_W / 2}" y2="{y_bus}" stroke="#555" '
                   f'stroke-width="2"/>')
        dash = ' stroke-dasharray="6 4"' if h["ssh"] != "pass" else ""
        out.append(f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="10" fill="#fff" '
                   f'stroke="{colour}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{x + 10}" y="{y + 22}" font-size="16" font-weight="bold">{e(h["name"])}</text>')
        state = "" if h["ssh"] == "pass" else " (no SSH)"
        out.append(f'<text x="{x + 10}" y="{y + 40}" font-size="12" fill="#333">{e(h["address"])}{state}</text>')
        out.append(f'<text x="{x + 10}" y="{y + 56}" font-size="11" fill="#666">{e(", ".join(h["groups"]))}'
                   f'</text>')
        for i, (svc, st) in enumerate(h["services"].items()):
            px, py = x + 10 + (i % 2) * 78, y + 66 + (i // 2) * 22
            out.append(f'<rect x="{px}" y="{py}" width="74" height="18" rx="9" fill="{COLOURS[st]}">'
                       f'<title>{e(SERVICE_NAMES.get(svc, svc))}: {st}</title></rect>'
                       f'<text x="{px + 37}" y="{py + 13}" font-size="10" fill="#fff" text-anchor="middle">'
                       f'{e(SERVICE_NAMES.get(svc, svc))}</text>')

    for i, h in enumerate(top):
        box(h, GAP + i * (BOX_W + GAP), y_top, y_top + BOX_H)
    for i, h in enumerate(bottom):
        box(h, GAP + i * (BOX_W + GAP), y_bot, y_bot)
    for i, name in enumerate(ring):  # the ring's arrows: to the right neighbour, the last one back round below
        nxt = ring[(i + 1) % len(ring)]
        (x1, y1), (x2, _) = pos[name], pos[nxt]
        if len(ring) == 1:
            continue
        if x2 > x1:
            out.append(f'<line x1="{x1 + BOX_W}" y1="{y1 + BOX_H / 2}" x2="{x2}" y2="{y1 + BOX_H / 2}" '
                       f'stroke="#3b5998" stroke-width="3" marker-end="url(#arrow)"/>')
        else:
            yb = y1 + BOX_H
            out.append(f'<path d="M{x1 + BOX_W / 2},{yb} C{x1 + BOX_W / 2},{yb + 60} {x2 + BOX_W / 2},{yb + 60} '
                       f'{x2 + BOX_W / 2},{yb + 2}" fill="none" stroke="#3b5998" stroke-width="3" '
                       f'marker-end="url(#arrow)"/>')
    if ring:
        out.append(f'<text x="{width - GAP / 2}" y="{height - 8}" font-size="12" fill="#3b5998" '
                   f'text-anchor="end">Pyro4 ring: {html.escape(" → ".join([*ring, ring[0]]))}</text>')
    out.append("</svg>")
    return "\n".join(out)


# --- HTML ------------------------------------------------------------------------------------------------------

PAGE = jinja2.Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labkit check: {{ r.cluster }}</title>
<style>
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { margin-bottom: 4px; } .sub { color: #666; margin-top: 0; }
.status { display: inline-block; padding: 4px 12px; border-radius: 12px; color: #fff; font-weight: bold; }
.ok { background: #2e9e44; } .failing { background: #d0312d; } .unreachable, .broken { background: #555; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 14px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.o { font-weight: bold; color: #fff; border-radius: 8px; padding: 1px 8px; font-size: 12px; }
.o.pass, td.pass { background: #2e9e44; } .o.fail, td.fail { background: #d0312d; }
.o.blocked, td.blocked { background: #9a9a9a; }
td.cell { color: #fff; text-align: center; font-size: 12px; min-width: 60px; } td.none { background: #fff; }
tr.fail td.m { background: #fdecea; } .hint { color: #8a4b00; }
.bar { display: inline-block; height: 14px; background: #3b5998; vertical-align: middle; }
.svg { overflow-x: auto; border: 1px solid #ddd; padding: 8px; }
</style></head><body>
<h1>labkit check: cluster {{ r.cluster }}</h1>
<p class="sub">{{ r.inventory }} ({{ r.backend }}) · {{ r.time }} · {{ "%.1f"|format(r.seconds) }} s</p>
<p><span class="status {{ r.status.split()[0] }}">{{ r.status }}</span>
 {{ r.counts.pass }} passed, {{ r.counts.fail }} failed, {{ r.counts.blocked }} blocked
 {% if score %} · score {{ "%g"|format(score.points) }} / {{ "%g"|format(score.max) }}
 ({{ "%.0f"|format(score.percent) }}%){% endif %}</p>
{% if r.error %}<p class="fail o">{{ r.error }}</p>{% endif %}
{% if r.faults %}<h2>labkit faults in force</h2>
<p>Set on purpose with fab (impair, partition, fault): failures below may be these. <code>fab heal</code> undoes
them.</p><ul>{% for f in r.faults %}<li>{{ fault_line(f) }}</li>{% endfor %}</ul>{% endif %}
{% if r.hosts %}<h2>Topology</h2>
<div class="svg">{{ svg|safe }}</div>
<p class="sub">Border: blue = SSH answers, dashed grey/red = no SSH. Pills: each service, green = all its checks
pass, red = one fails, grey = blocked.</p>{% endif %}
<h2>Failed and blocked</h2>
{% set bad = r.checks|rejectattr("outcome", "equalto", "pass")|list %}
{% if bad %}<table><tr><th>layer</th><th>host</th><th>check</th><th>outcome</th><th>message</th></tr>
{% for c in bad %}<tr class="{{ c.outcome }}"><td class="m">{{ c.layer }}</td><td class="m">{{ c.host }}</td>
<td class="m"><code>{{ c.id }}</code><br>{{ c.title }}</td><td class="m"><span class="o {{ c.outcome }}">{{ c.outcome }}</span></td>
<td class="m">{% if c.outcome == 'fail' %}expected: {{ c.expected }}<br>found: {{ c.found }}<br>
<span class="hint">hint: {{ c.hint }}</span>{% else %}blocked by <code>{{ c.blocked_by }}</code>{% endif %}</td></tr>
{% endfor %}</table>{% elif r.checks %}<p>None: every check passed.</p>{% else %}<p>None ran: the inventory could not
be read (above).</p>{% endif %}
<h2>Checks by host</h2>
<table><tr><th>layer</th><th>check</th>{% for h in hostnames %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in matrix %}<tr><td>{{ row.layer }}</td><td><code>{{ row.id }}</code><br>{{ row.title }}</td>
{% for h in hostnames %}{% set c = row.cells.get(h) %}{% if c %}<td class="cell {{ c.outcome }}"
 title="{{ message(c) }}">{{ c.outcome }}</td>{% else %}<td class="none"></td>{% endif %}{% endfor %}</tr>
{% endfor %}</table>
<details><summary>Every check with its message</summary>
<table><tr><th>layer</th><th>host</th><th>check</th><th>outcome</th><th>message</th></tr>
{% for c in r.checks %}<tr><td>{{ c.layer }}</td><td>{{ c.host }}</td><td><code>{{ c.id }}</code></td>
<td><span class="o {{ c.outcome }}">{{ c.outcome }}</span></td><td>{{ message(c) }}</td></tr>
{% endfor %}</table></details>
<h2>Last ring trace</h2>
{% if r.ring_trace %}<p>'{{ r.ring_trace.message }}' went round {{ r.ring_trace.laps }} lap(s) in
{{ "%.1f"|format(r.ring_trace.total_ms) }} ms: gcd({{ r.ring_trace.input|join(", ") }}) = {{ r.ring_trace.gcd }},
lcm = {{ r.ring_trace.lcm }}</p>
<table><tr><th>hop</th><th>lap</th><th>node</th><th>host</th><th>address</th><th>+ms</th><th>numbers after step</th></tr>
{% set t0 = r.ring_trace.trace[0].received %}
{% for h in r.ring_trace.trace %}<tr><td>{{ loop.index }}</td><td>{{ h.lap }}</td><td>{{ h.node }}</td>
<td>{{ h.host }}</td><td>{{ h.address }}</td><td>{{ "%.2f"|format((h.received - t0) * 1000) }}</td>
<td>{{ h.numbers|join(",") }}</td></tr>{% endfor %}</table>
{% else %}<p>No ring lap ran (see the app.ring check).</p>{% endif %}
<h2>Celery jobs per worker host</h2>
{% if r.celery %}<p>{{ r.celery.ok }} of {{ r.celery.tasks }} jobs right, {{ r.celery.tasks_per_s }} tasks/s</p>
<table><tr><th>worker host</th><th>jobs</th><th></th></tr>
{% set most = r.celery.hosts.values()|max %}
{% for h, n in r.celery.hosts.items() %}<tr><td>{{ h }}</td><td>{{ n }}</td>
<td><span class="bar" style="width: {{ (300 * n / most)|int }}px"></span></td></tr>{% endfor %}</table>
{% else %}<p>No Celery jobs ran (see the app.celery check).</p>{% endif %}
</body></html>
""", autoescape=True)


def html_page(report: dict, score: dict | None = None) -> str:
    svg = topology_svg(report) if report["hosts"] else ""
    hostnames = [h["name"] for h in report["hosts"]]
    rows: dict[str, dict] = {}
    for c in report["checks"]:
        row = rows.setdefault(c["id"], {"id": c["id"], "layer": c["layer"], "title": c["title"], "cells": {}})
        row["cells"][c["host"]] = c
    return PAGE.render(r=report, svg=svg, score=score, hostnames=hostnames, matrix=list(rows.values()),
                       message=message, fault_line=fault_line)
