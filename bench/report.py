"""The benchmark report: `reports/bench.json` (every row, for comparing runs) and `reports/bench.html` (the table,
and a plot wherever a picture says more than a number).

A row is what each `bench_*.run()` returns: bench, value, unit, baseline_name, baseline, ratio, target, ok. A row
without a baseline of its own (a step of the figure above it, e.g. one role's time in `fab up`) has baseline and
ratio None: its cells are left empty (`cells`), not shown as a 0 that reads as measured. Two optional keys draw
plots:

    "samples": [float, ...]                    a distribution (e.g. every ring lap's time): a histogram
    "series": {"x": [...], "y": [...], "x_label": str, "y_label": str}   a curve (e.g. requests/s by clients)

Other keys go into the JSON as they are (e.g. "runs": each run's figure, where the value is their median;
"warmup": a run before them that the median leaves out).

The HTML is one self-contained file (plots are inline SVG from matplotlib); no browser-side code.
"""

from __future__ import annotations

import io
import json
import platform
import time
from pathlib import Path

import jinja2

from labkit import write_atomic

PAGE = jinja2.Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labkit benchmarks {{ when }}</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
 table { border-collapse: collapse; } th, td { padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: left; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
 .ok { color: #1a7f37; font-weight: 600; } .missed { color: #cf222e; font-weight: 600; }
 figure { display: inline-block; margin: 1em 1em 0 0; } figcaption { font-weight: 600; }
</style></head><body>
<h1>labkit benchmarks</h1>
<p>{{ when }} on {{ machine }}. Each figure stands beside a baseline measured in the same run; the ratio is
value / baseline. {% if failed %}<span class="missed">Failed to run: {{ failed | join(", ") }}.</span>{% endif %}</p>
<table>
<tr>{% for h in HEADER %}<th>{{ h }}</th>{% endfor %}</tr>
{% for r, c in table %}<tr><td>{{ c[0] }}</td><td class="num">{{ c[1] }}</td><td>{{ c[2] }}</td>
<td class="num">{{ c[3] }}</td><td class="num">{{ c[4] }}</td><td>{{ c[5] }}</td>
<td>{% if r.ok is true %}<span class="ok">ok</span>{% elif r.ok is false %}<span class="missed">MISSED</span>{% endif %}</td></tr>
{% endfor %}</table>
{% for title, svg in plots %}<figure><figcaption>{{ title }}</figcaption>{{ svg }}</figure>{% endfor %}
</body></html>
""", autoescape=True)


HEADER = ["benchmark", "value", "baseline", "baseline value", "ratio", "target", ""]
VERDICT = {True: "ok", False: "MISSED", None: ""}


def cells(r: dict) -> list[str]:
    """A row as every table shows it (HEADER): empty baseline and ratio cells where the row has none."""
    def num(x, spec: str) -> str:
        return "" if x is None else format(x, spec)

    return [r["bench"], f'{r["value"]:.4g} {r["unit"]}', r.get("baseline_name", ""), num(r.get("baseline"), ".4g"),
            num(r.get("ratio"), ".3g"), r.get("target") or "", VERDICT[r.get("ok")]]


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def plots(rows: list[dict]) -> list[tuple[str, str]]:
    """(title, inline SVG) for every row that carries samples or a series."""
    wanted = [r for r in rows if r.get("samples") or r.get("series")]
    if not wanted:
        return []
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    out = []
    for r in wanted:
        fig, ax = plt.subplots(figsize=(5, 3))
        if r.get("samples"):
            ax.hist(r["samples"], bins=40, color="#4c72b0")
            ax.set_xlabel(r["unit"])
            ax.set_ylabel("count")
        else:
            s = r["series"]
            ax.plot(s["x"], s["y"], marker="o", color="#4c72b0")
            ax.set_xlabel(s.get("x_label", ""))
            ax.set_ylabel(s.get("y_label", r["unit"]))
        ax.grid(alpha=.3)
        out.append((r["bench"].strip(), jinja2.utils.markupsafe.Markup(_svg(fig))))
        plt.close(fig)
    return out


def write(rows: list[dict], failed: list[str], directory: Path) -> tuple[Path, Path]:
    """Write bench.json and bench.html into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine = f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})"
    data = {"when": when, "machine": machine, "rows": rows, "failed": failed}
    json_path, html_path = directory / "bench.json", directory / "bench.html"
    for path, text in ((json_path, json.dumps(data, indent=1, default=str)),
                       (html_path, PAGE.render(table=[(r, cells(r)) for r in rows], failed=failed, when=when,
                                               machine=machine, plots=plots(rows), HEADER=HEADER))):
        write_atomic(path, text)
    return json_path, html_path
