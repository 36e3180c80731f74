"""report.html: the test x format-protocol matrix a reviewer opens instead of scrolling logs.

One self-contained page (inline CSS and a few lines of script, no external
asset), so it opens straight from a CI artifact. Each cell is coloured by
outcome; a cell that did not pass cleanly (or leaked a process) links to its entry below the matrix, which
holds the reason, the start of the diff, the diagnostics summary and links to
the run's files (output, diff, diagnostics, leaked processes, reproducer).
"""

from __future__ import annotations

import heapq
import html
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from iotests_run.model import Result
from iotests_run.report.outcomes import PRESENTATION
from iotests_run.report.summary import closing_line
from iotests_run.results.folder import DIFF, MAX_SECONDS, REPRODUCER
from iotests_run.results.meta import Meta

DIFF_LINES = 200
# Characters, not only lines: one 10 MB line would otherwise land whole in the page.
DIFF_CHARS = 20_000
TEXT_CHARS = 4_000  # a reason, a diagnostics summary, the leaked list
# The page stays a page (tens of MB at most) however many runs a merge joins: the matrix shows the tests with a
# problem and then others up to MATRIX_ROWS, at most MATRIX_COLUMNS format-protocols, and DETAILS runs that did
# not pass cleanly are detailed below it; the rest are counted in the page (every run is in results.json).
MATRIX_ROWS = 2_000
MATRIX_COLUMNS = 100
DETAILS = 500

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #202124; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
.meta { color: #5f6368; margin: 0 0 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #dadce0; padding: 2px 8px; text-align: left; }
table.matrix td.cell { text-align: center; min-width: 5em; }
table.matrix th.test { font-weight: normal; font-family: monospace; }
thead th { position: sticky; top: 0; background: #f8f9fa; }
td.cell a { color: inherit; display: block; text-decoration: none; font-weight: bold; }
.closing { font-weight: bold; margin: 1em 0; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 4px; border: 1px solid #dadce0; }
.run { border-top: 1px solid #dadce0; padding: .5em 0; }
.run h3 { margin: .2em 0; font-size: 1em; }
pre { background: #f8f9fa; padding: .5em; overflow-x: auto; max-height: 30em; }
.controls { margin: 1em 0; }
td.leaked { outline: 2px dashed #c5221f; outline-offset: -3px; }
.recent { color: #5f6368; font-style: italic; }
.why { font-weight: bold; white-space: pre-wrap; background: #fff4e5; padding: 4px; }
.graph img { max-width: 100%; border: 1px solid #dadce0; margin: .3em 0; }
"""
STYLE += "".join(f"td.o-{o.value}, .legend .o-{o.value} {{ background: {p.colour}; }}\n"
                 for o, p in PRESENTATION.items())

# Only rows with a problem, on request; the count of shown rows is kept up to date.
SCRIPT = """
const box = document.getElementById('only-problems');
const rows = Array.from(document.querySelectorAll('table.matrix tbody tr'));
function apply() {
  let shown = 0;
  for (const row of rows) {
    const hide = box.checked && !row.classList.contains('problem');
    row.hidden = hide;
    if (!hide) shown++;
  }
  document.getElementById('shown').textContent = `${shown} of ${rows.length} tests shown`;
}
box.addEventListener('change', apply);
apply();
"""


def _notable(result: Result) -> bool:
    """A run worth its own entry below the matrix: anything but a clean pass or a not-run."""
    return result.outcome.is_notable or bool(result.leaked)


def _anchor(result: Result) -> str:
    """An id made of plain characters whatever the run's names hold (a merged results.json is input too)."""
    return "run-" + re.sub(r"[^A-Za-z0-9_.-]", "-", f"{result.run.combo}-{result.run.test.key}")


def _trimmed(text: str, limit: int, where: str) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... {len(text) - limit} more characters{where}"


def _linkable(path: str) -> bool:
    """A file inside the results folder: relative, no scheme (javascript:, http:), no way up."""
    return not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:|/", path) and ".." not in path.split("/")


def _cell(result: Result | None) -> str:
    if result is None:
        return '<td class="cell"></td>'
    text = PRESENTATION[result.outcome].cell
    cpu = f", {result.cpu_s:.1f} s CPU" if result.cpu_s is not None else ""
    tip = f"{result.run.label}: {PRESENTATION[result.outcome].column}, {result.duration_s:.1f} s{cpu}"
    if result.reason:
        tip += f" - {result.reason.splitlines()[0][:300]}"
    if result.leaked:
        text, tip = f"{text} +leak", f"{tip} - left {len(result.leaked)} process(es) running, killed"
    inner = html.escape(text)
    if _notable(result):
        inner = f'<a href="#{html.escape(_anchor(result))}">{inner}</a>'
    leak = " leaked" if result.leaked else ""
    return f'<td class="cell o-{result.outcome.value}{leak}" title="{html.escape(tip)}">{inner}</td>'


def _seen_as(result: Result) -> str:
    """The reason, less the explanation's first line that leads it (the block above shows that): how the run was
    seen to fail ("seen as: output mismatch")."""
    first = result.explanation.splitlines()[0] if result.explanation.strip() else ""
    if not first or not result.reason.startswith(first):
        return result.reason
    rest = result.reason[len(first):].strip()
    if rest.startswith("(") and rest.endswith(")"):
        rest = rest[1:-1]
    return f"seen as: {rest}" if rest else ""


def _details(result: Result, exists: Callable[[str], bool]) -> str:
    files = list(result.attachments)
    if result.artifacts:
        files.append(f"{result.artifacts}/{REPRODUCER}")
    links = " ".join(f'<a href="{html.escape(quote(f))}">{html.escape(f.rsplit("/", 1)[-1])}</a>'
                     for f in dict.fromkeys(files) if _linkable(f) and exists(f))
    parts = [f'<div class="run" id="{html.escape(_anchor(result))}">',
             f"<h3>{html.escape(result.run.label)}: {html.escape(PRESENTATION[result.outcome].column)}"
             f" ({result.duration_s:.1f} s)</h3>"]
    if result.explanation:  # why it hung or crashed, before the files, the diff and the backtraces
        parts.append(f'<pre class="why">{html.escape(_trimmed(result.explanation, TEXT_CHARS, ""))}</pre>')
    seen = _seen_as(result)
    if seen:
        parts.append(f"<div>{html.escape(_trimmed(seen, TEXT_CHARS, ''))}</div>")
    if result.recent:
        parts.append(f'<div class="recent">{html.escape(_trimmed(result.recent, TEXT_CHARS, ""))}</div>')
    if links:
        parts.append(f"<div>Files: {links}</div>")
    # the block graphs of the run's hung or crashed QEMU processes (an <img> runs no script of the SVG's)
    parts += [f'<div class="graph"><img src="{html.escape(quote(f))}" alt="{html.escape(f.rsplit("/", 1)[-1])}">'
              "</div>" for f in dict.fromkeys(files) if f.endswith(".svg") and "block" in f.rsplit("/", 1)[-1]
              and _linkable(f) and exists(f)]
    if result.diff:
        lines = result.diff.splitlines()
        shown = "\n".join(lines[:DIFF_LINES])
        shown = _trimmed(shown, DIFF_CHARS, f" in {DIFF}")
        if len(lines) > DIFF_LINES:
            shown += f"\n... {len(lines) - DIFF_LINES} more lines in {DIFF}"
        parts.append(f"<pre>{html.escape(shown)}</pre>")
    if result.diagnostics:
        parts.append(f"<pre>{html.escape(_trimmed(result.diagnostics, TEXT_CHARS, ''))}</pre>")
    if result.leaked:
        leaked = _trimmed(", ".join(result.leaked), TEXT_CHARS, " in leaked.txt")
        parts.append(f"<div>Leaked (killed): {html.escape(leaked)}</div>")
    parts.append("</div>")
    return "\n".join(parts)


TIMELINE_WIDTH = 1000
LANE_PX, GRAPH_PX = 12, 60
NICE_STEPS_S = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
# Whatever a (merged) results.json holds, a chart draws at most this much: the longest bars (problems first) in
# the first lanes, the samples thinned to about two a pixel, the charts of the first inputs.
TIMELINE_BARS = 2000
TIMELINE_LANES = 200
TIMELINE_POINTS = 2 * TIMELINE_WIDTH
TIMELINE_CHARTS = 50


def _clamped(value: Any) -> float | None:
    """A finite number from 0 to MAX_SECONDS, or None: what the chart may scale (1e300 or inf must not size it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return min(max(float(value), 0.0), MAX_SECONDS)


def _lanes(spans: Sequence[tuple[float, float]]) -> list[int]:
    """A lane per (start, duration), sorted by start, so that runs in one lane never overlap: each takes the
    lowest lane free at its start (two heaps: a million runs in n log n, not n x lanes)."""
    busy: list[tuple[float, int]] = []  # (end, lane)
    free: list[int] = []
    lanes = []
    for start, duration in spans:
        while busy and busy[0][0] <= start + 1e-3:
            heapq.heappush(free, heapq.heappop(busy)[1])
        lane = heapq.heappop(free) if free else len(busy) + len(free)
        heapq.heappush(busy, (start + duration, lane))
        lanes.append(lane)
    return lanes


def _points(samples: Sequence[Any]) -> list[tuple[float, float, float | None]]:
    """The samples that are [seconds, runs in flight, busy cores or null], thinned to TIMELINE_POINTS."""
    points = []
    for sample in samples:
        if isinstance(sample, (list, tuple)) and len(sample) == 3:
            at, flight = _clamped(sample[0]), _clamped(sample[1])
            if at is not None and flight is not None:
                points.append((at, flight, _clamped(sample[2])))
    return points[::math.ceil(len(points) / TIMELINE_POINTS) or 1]


def _bar(r: Result, start: float, duration: float, lane: int, scale: float) -> str:
    cpu = f", {r.cpu_s:.1f} s CPU" if isinstance(r.cpu_s, (int, float)) else ""
    tip = f"{r.run.label}: {PRESENTATION[r.outcome].column}, {duration:.1f} s from {start:.1f} s{cpu}"
    return (f'<rect class="bar o-{r.outcome.value}" x="{start * scale:.1f}" '
            f'y="{lane * LANE_PX}" width="{max(duration * scale, 1):.1f}" height="{LANE_PX - 2}" '
            f'fill="{PRESENTATION[r.outcome].colour}" stroke="#5f6368" stroke-width="0.3">'
            f"<title>{html.escape(tip)}</title></rect>")


def _drawn(runs: Sequence[tuple[Result, float, float]], lanes: Sequence[int]) -> list[int]:
    """Which runs get a bar: those in the first TIMELINE_LANES lanes, at most TIMELINE_BARS of them, runs that
    did not pass cleanly and then the longest first (the short ones are what a crowded chart leaves out)."""
    fits = [i for i, lane in enumerate(lanes) if lane < TIMELINE_LANES]
    if len(fits) > TIMELINE_BARS:
        fits = sorted(fits, key=lambda i: (not _notable(runs[i][0]), -runs[i][2]))[:TIMELINE_BARS]
    return sorted(fits)


def timeline(results: Sequence[Result], samples: Sequence[Any]) -> str:
    """Where the time went: a bar per started run in its lane (colour: outcome; hover: test, duration,
    CPU), and under it the runs in flight and the busy cores, sampled once a second. Inline SVG, bounded
    (TIMELINE_BARS, TIMELINE_POINTS, MAX_SECONDS) whatever the numbers it is given."""
    runs = sorted(((r, start, _clamped(r.duration_s) or 0.0) for r in results
                   if (start := _clamped(r.started_s)) is not None), key=lambda x: (x[1], x[0].run.label))
    if not runs:
        return ""
    points = _points(samples if isinstance(samples, (list, tuple)) else [])
    total = max([start + duration for _, start, duration in runs] + [p[0] for p in points] + [1.0])
    scale = TIMELINE_WIDTH / total
    lanes = _lanes([(start, duration) for _, start, duration in runs])
    drawn = _drawn(runs, lanes)
    top = (max((lanes[i] for i in drawn), default=0) + 1) * LANE_PX
    parts = [f'<svg class="timeline" width="{TIMELINE_WIDTH + 120}" height="{top + GRAPH_PX + 30}" '
             'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="10">']
    parts += [_bar(runs[i][0], runs[i][1], runs[i][2], lanes[i], scale) for i in drawn]
    if len(drawn) < len(runs):
        parts.append(f'<text x="{TIMELINE_WIDTH + 4}" y="{top - 2}">{len(runs) - len(drawn)} runs not drawn</text>')
    if points:
        peak = max([p[1] for p in points] + [p[2] or 0 for p in points] + [1])
        for index, colour, name in ((1, "#1a73e8", "runs in flight"), (2, "#c5221f", "busy cores")):
            line = " ".join(f"{p[0] * scale:.1f},{top + GRAPH_PX - (p[index] or 0) * GRAPH_PX / peak:.1f}"
                            for p in points if p[index] is not None)
            if line:
                parts.append(f'<polyline class="graph-{index}" points="{line}" fill="none" stroke="{colour}" '
                             'stroke-width="2"/>')
                parts.append(f'<text x="{TIMELINE_WIDTH + 4}" y="{top + 12 * index}" fill="{colour}">{name}</text>')
        parts.append(f'<text x="{TIMELINE_WIDTH + 4}" y="{top + GRAPH_PX}">peak {peak:g}</text>')
    # about ten round labels (beyond two hours, whole hours)
    step = next((s for s in NICE_STEPS_S if s >= total / 10), math.ceil(total / 10 / 3600) * 3600)
    parts += [f'<text x="{t * scale:.1f}" y="{top + GRAPH_PX + 22}">{t} s</text>'
              for t in range(0, int(total) + 1, step)]
    parts.append("</svg>")
    return "\n".join(parts)


def _words(value: Any) -> str:
    """A command line as a (merged) results.json holds it: a list of words, else nothing."""
    return " ".join(map(str, value)) if isinstance(value, list) else ""


def _timelines(results: Sequence[Result], meta: Meta) -> str:
    """One timeline for a run; for a merge, one per input (each shard ran on its own clock), the first
    TIMELINE_CHARTS of them."""
    shards = meta.shards
    if not shards:
        return timeline(results, meta.timeline)
    by_shard: dict[int, list[Result]] = {}
    for r in results:
        by_shard.setdefault(r.shard, []).append(r)
    charts = []
    for number, shard in enumerate(shards[:TIMELINE_CHARTS], 1):
        shard = shard if isinstance(shard, dict) else {}
        samples = shard.get("timeline")
        mine = by_shard.get(number, [])
        chart = timeline(mine, samples if isinstance(samples, list) else [])
        part = shard.get("shard") if isinstance(shard.get("shard"), dict) else {}
        name = f"shard {part.get('index')}/{part.get('total')}" if part else f"input {number}"
        wall = f", wall {shard['wall_s']} s" if isinstance(shard.get("wall_s"), (int, float)) else ""
        heading = f"{name} ({shard.get('folder', '?')}){wall}"
        command = _words(shard.get("command"))
        said = f'<p class="meta"><code>{html.escape(command)}</code></p>' if command else ""
        if not chart:  # every run of its part was known not to run (not affected, not applicable)
            chart = f'<p class="meta">started no run: its {len(mine)} run(s) were not run (see the matrix)</p>'
        charts.append(f'<h3 class="shard">{html.escape(heading)}</h3>{said}{chart}')
    if len(shards) > TIMELINE_CHARTS:
        charts.append(f'<p class="meta">the timelines of {len(shards) - TIMELINE_CHARTS} more inputs are not '
                      "drawn</p>")
    return "\n".join(charts)


def _shown_rows(by_test: Mapping[str, Mapping[str, Result]]) -> set[str]:
    """The tests the matrix shows: every one with a problem, then the others in order, MATRIX_ROWS in all."""
    problems = [key for key, cells in by_test.items() if any(_notable(r) for r in cells.values())]
    shown = set(problems[:MATRIX_ROWS])
    for key in by_test:
        if len(shown) >= MATRIX_ROWS:
            break
        shown.add(key)
    return shown


def _left_out(by_test: Mapping[str, Mapping[str, Result]], shown: set[str], combos: Sequence[str]) -> str:
    """What the matrix leaves out, as counts, said in the page (every run stays in results.json and junit.xml)."""
    hidden = [r for key, cells in by_test.items() for combo, r in cells.items()
              if key not in shown or combo not in combos]
    if not hidden:
        return ""
    counts = Counter(PRESENTATION[r.outcome].column for r in hidden)
    tests = sum(key not in shown for key in by_test)
    columns = len({r.run.combo for r in hidden} - set(combos))
    where = [f"{tests} more tests" if tests else "", f"{columns} more format-protocol columns" if columns else ""]
    tally = ", ".join(f"{c}: {n}" for c, n in counts.items())
    return (f'<p class="meta">Not in the matrix ({" and ".join(w for w in where if w)}, every run in results.json '
            f'and junit.xml): {len(hidden)} runs ({html.escape(tally)})</p>')


def _fact_text(value: Any) -> str:
    return value if isinstance(value, str) else "?"


def _facts(meta: Meta) -> list[str]:
    """The page's first line."""
    facts = [f"QEMU {_fact_text(meta.qemu.get('version'))} ({_fact_text(meta.qemu.get('source'))})",
             f"started {_fact_text(meta.started or None)}"]
    if meta.wall_s is not None:
        facts.append(f"wall {meta.wall_s} s")
    if meta.affected:
        facts.append(meta.affected)
    if meta.missing_shards:
        facts.append(f"INCOMPLETE (shard {', '.join(meta.missing_shards[:TIMELINE_CHARTS])} not merged)")
    elif not meta.complete:
        facts.append("INCOMPLETE (interrupted)")
    return facts


def html_report(results: Sequence[Result], meta: Meta | Mapping[str, Any], title: str,
                exists: Callable[[str], bool] = lambda path: True) -> str:
    """The page; `exists` says whether a file (relative to the results folder) is there to link to. Bounded
    whatever the runs: MATRIX_ROWS tests (problems first) by MATRIX_COLUMNS format-protocols, DETAILS entries
    below; what is left out is counted in the page. Loose fields (a dict) are read as results.json's are
    (`Meta.from_dict`), complete unless they say otherwise."""
    if not isinstance(meta, Meta):
        meta = Meta.from_dict({"complete": True, **meta})
    runs_of = Counter(r.run.combo for r in results)  # the columns kept: those with the most runs
    combos = sorted(sorted(runs_of, key=lambda c: (-runs_of[c], c))[:MATRIX_COLUMNS])
    by_test: dict[str, dict[str, Result]] = {}
    for r in sorted(results, key=lambda r: r.run.test.key):
        by_test.setdefault(r.run.test.key, {})[r.run.combo] = r
    counts = Counter(r.outcome for r in results)
    shown = _shown_rows(by_test)

    head = "".join(f"<th>{html.escape(c)}</th>" for c in combos)
    rows = []
    for key, cells in by_test.items():
        if key not in shown:
            continue
        problem = any(_notable(r) for r in cells.values())
        name = next(iter(cells.values())).run.test.name
        rows.append(f'<tr{" class=problem" if problem else ""}><th class="test" title="{html.escape(key)}">'
                    f'{html.escape(name)}</th>{"".join(_cell(cells.get(c)) for c in combos)}</tr>')
    legend = "".join(f'<span class="o-{o.value}">{html.escape(PRESENTATION[o].column)}: {counts[o]}</span>'
                     for o in PRESENTATION if counts[o])
    notable = [r for r in sorted(results, key=lambda r: (r.run.combo, r.run.test.key)) if _notable(r)]
    more = (f'<p class="meta">{len(notable) - DETAILS} more runs that did not pass cleanly are not detailed here: '
            "see summary.txt, results.json and junit.xml</p>") if len(notable) > DETAILS else ""
    command = " ".join(meta.command)
    charts = _timelines(results, meta)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(" · ".join(_facts(meta)))}<br><code>{html.escape(command)}</code></p>',
        f'<p class="closing" id="closing">{html.escape(closing_line(results))}</p>',
        f'<p class="legend">{legend}</p>',
        '<p class="controls"><label><input type="checkbox" id="only-problems"> only tests with problems</label>'
        ' · <span id="shown"></span></p>',
        f'<table class="matrix"><thead><tr><th>test</th>{head}</tr></thead><tbody>',
        *rows, "</tbody></table>", _left_out(by_test, shown, combos),
        f"<h2>Where the time went</h2>{charts}" if charts else "",
        f"<h2>Runs that did not pass cleanly ({len(notable)})</h2>" if notable else "",
        *(_details(r, exists) for r in notable[:DETAILS]), more,
        f"<script>{SCRIPT}</script>", "</body></html>", ""])
