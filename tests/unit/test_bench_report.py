"""The benchmark report: JSON with every row, and one self-contained HTML page with the table and its plots."""

import json

from bench import report
from labnodes import output

ROWS = [
    {"bench": "ring lap median", "value": 1.1, "unit": "ms", "baseline_name": "pyro floor", "baseline": 1.0,
     "ratio": 1.1, "target": "<= 1.2", "ok": True, "samples": [1.0, 1.1, 1.2, 5.0]},
    {"bench": "math req/s", "value": 30000.0, "unit": "req/s", "baseline_name": "echo", "baseline": 60000.0,
     "ratio": 0.5, "target": ">= 30000", "ok": False,
     "series": {"x": [1, 100, 1000], "y": [2000, 25000, 30000], "x_label": "clients"}},
    {"bench": "plain <script>", "value": 2.0, "unit": "s", "baseline_name": "", "baseline": None, "ratio": None},
]


def test_report_keeps_every_row_and_draws_a_plot_per_distribution_or_series(tmp_path):
    json_path, html_path = report.write(ROWS, ["bench_broken"], tmp_path)
    data = json.loads(json_path.read_text())
    assert [r["bench"] for r in data["rows"]] == [r["bench"] for r in ROWS] and data["failed"] == ["bench_broken"]
    html = html_path.read_text()
    assert html.count("<svg") == 2 and "MISSED" in html and ">ok<" in html and "bench_broken" in html
    assert "<script>" not in html and "&lt;script&gt;" in html  # names are escaped, and no browser-side code


def test_report_without_plots_needs_no_plotting(tmp_path):
    _, html_path = report.write(ROWS[2:], [], tmp_path)
    assert "<svg" not in html_path.read_text()


def test_a_row_without_a_baseline_shows_empty_cells_not_a_measured_zero(tmp_path):
    assert report.cells(ROWS[2]) == ["plain <script>", "2 s", "", "", "", "", ""]
    assert report.cells(ROWS[1])[2:] == ["echo", "6e+04", "0.5", ">= 30000", "MISSED"]
    _, html_path = report.write(ROWS[2:], [], tmp_path)
    row = html_path.read_text().split("plain &lt;script&gt;")[1].split("</tr>")[0]
    assert '<td class="num">2 s</td>' in row and row.count('<td class="num"></td>') == 2 and ">0<" not in row


def test_the_console_table_keeps_a_step_rows_indent(capsys):
    step = {"bench": "  provision: role labnodes", "value": 1.5, "unit": "s", "baseline": None, "ratio": None}
    output.table([report.cells(ROWS[0]), report.cells(step)], report.HEADER)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("ring lap median ") and lines[3].startswith("  provision: role labnodes ")
