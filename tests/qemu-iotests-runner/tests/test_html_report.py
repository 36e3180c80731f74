"""report.html: built from real runs of fake iotests, opened in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.report import html
from iotests_run.report.html import html_report
from iotests_run.report.outcomes import PRESENTATION
from support import FakeTree, run_cli

LEAKER = 'setsid sleep 3600 </dev/null >/dev/null 2>&1 &\nsleep 0.5\necho ok\n'


class _Page(HTMLParser):
    """What the browser's DOM holds: links, ids, matrix cells by outcome, text."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.cells: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "a" and a.get("href"):
            self.hrefs.append(str(a["href"]))
        classes = (a.get("class") or "").split()
        if tag == "td" and "cell" in classes:
            outcome = next((c[2:] for c in classes if c.startswith("o-")), "")
            self.cells[outcome] = self.cells.get(outcome, 0) + 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("IOTESTS_RUN_REQUIRE_BROWSER"):
        pytest.fail("chromium is required (IOTESTS_RUN_REQUIRE_BROWSER is set) but not installed")
    pytest.skip("chromium is not installed (make check installs Debian's chromium when run as root)")


def _browser(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1000,800"]
    return subprocess.run([_chromium(), *flags, *args, page.as_uri()], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _colours(png: Path) -> set[tuple[int, int, int]]:
    image = pytest.importorskip("PIL.Image").open(png).convert("RGB")
    return {rgb for _, rgb in image.getcolors(maxcolors=1 << 20) or []}


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


@pytest.mark.process
def test_report_renders_in_a_browser_and_every_link_leads_somewhere(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", 'echo "hello $IMGFMT"\n', out="hello qcow2\n")
    fake_tree.add_test("002", "echo changed\n", out="original\n")
    fake_tree.add_test("003", 'echo "not for $IMGFMT" > "$TEST_DIR/003.notrun"\n', out="")
    fake_tree.add_test("004", "sleep 3600\n", out="")
    fake_tree.add_test("005", LEAKER, out="ok\n")
    fake_tree.add_test("006", "kill -SEGV $$\n", out="")
    fake_tree.add_test("007", "echo '<b>&bad</b>'\n", out="good\n")
    results = tmp_path / "results"
    proc = run_cli(["-g", "quick", "-f", "qcow2,raw", "--hang-timeout", "2", *fake_tree.args(results)])
    assert proc.returncode == 1, proc.stderr
    report = results / "report.html"
    assert f"HTML report: {report}" in proc.stdout

    dom = _browser(report, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _Page()
    page.feed(dom.stdout)
    text = "".join(page.text)
    assert "7 of 7 tests shown" in text  # the page's script ran
    # 001 passes on qcow2 only (its output names the format), 005 passes twice (leaking); 003 is not run
    assert "3 passed, 9 failed, 2 skipped" in text
    assert page.cells == {"pass": 3, "fail": 5, "not-run": 2, "hang": 2, "crash": 2}, page.cells
    assert "<b>&bad</b>" in text  # the test's output is shown as text, never as markup
    anchors = [h[1:] for h in page.hrefs if h.startswith("#")]
    files = [h for h in page.hrefs if not h.startswith("#")]
    # every cell that did not pass, and the two passes that leaked a process
    assert len(anchors) == 11 and all(a in page.ids for a in anchors)
    assert not [f for f in files if re.match(r"[a-z]+:", f)]  # self-contained: nothing outside the folder
    assert all((results / f).is_file() for f in files)
    names = {f.rsplit("/", 1)[-1] for f in files}
    assert {"002.out.bad", "diff.txt", "processes.txt", "leaked.txt", "reproduce.sh"} <= names

    shot = tmp_path / "shot.png"
    _browser(report, tmp_path / "profile", f"--screenshot={shot}")
    seen = _colours(shot)
    for outcome in (Outcome.PASS, Outcome.FAIL, Outcome.NOT_RUN, Outcome.HANG, Outcome.CRASH):
        assert _rgb(PRESENTATION[outcome].colour) in seen, f"no {outcome.value} cell painted"


@pytest.mark.process
def test_big_diffs_are_trimmed_and_every_outcome_has_a_colour() -> None:
    run = Run(TestCase("040", Path("040"), frozenset()), "qcow2", "file")
    diff = "\n".join(f"+line {i}" for i in range(1000))
    page = html_report([Result(run, Outcome.FAIL, "output mismatch", diff=diff, artifacts="runs/qcow2-file/040",
                               attachments=("runs/qcow2-file/040/diff.txt",))],
                       {"command": ["iotests-run"], "complete": False}, "t", exists=lambda rel: False)
    assert "+line 199" in page and "+line 200" not in page and "800 more lines in diff.txt" in page
    assert "diff.txt</a>" not in page  # files that are not there are not linked
    assert "INCOMPLETE" in page
    assert set(PRESENTATION) == set(Outcome)


def test_an_explained_run_shows_its_explanation_first_and_then_how_it_was_seen_once() -> None:
    run = Run(TestCase("256", Path("256"), frozenset()), "qcow2", "file")
    why = "deadlock: thread 1 (main) holds the BQL (bql) and polls\nstack: a <- b"
    explained = Result(run, Outcome.HANG, "deadlock: thread 1 (main) holds the BQL (bql) and polls (no CPU for 30 s)",
                       explanation=why)
    plain = Result(Run(TestCase("040", Path("040"), frozenset()), "qcow2", "file"), Outcome.FAIL, "output mismatch")
    page = html_report([explained, plain], {"command": ["iotests-run"]}, "t", exists=lambda rel: False)
    entry = page[page.index('<div class="run" id="run-qcow2-file-256">'):]
    assert entry.count("holds the BQL (bql) and polls") == 1  # once, in the explanation block
    assert entry.index('<pre class="why">deadlock') < entry.index("<div>seen as: no CPU for 30 s</div>")
    assert "<div>output mismatch</div>" in page  # a run without an explanation keeps its reason


@pytest.mark.process
def test_a_timeline_of_700_runs_stays_one_lane_per_slot_and_every_bar_visible() -> None:
    """700 runs, 8 at a time, over about ten minutes (a qcow2+raw quick run on a big machine): 8 lanes,
    not 700; every bar at least a pixel wide; the chart a screen high."""
    results, clock = [], [0.0] * 8
    for i in range(700):
        slot = min(range(8), key=lambda k: clock[k])
        length = 0.05 + (i * 7919 % 600) / 40  # 0.05 s to 15 s
        run = Run(TestCase(f"{i:03}", Path(f"{i:03}"), frozenset()), "qcow2" if i % 2 else "raw", "file")
        results.append(Result(run, Outcome.PASS if i % 50 else Outcome.FAIL, "", round(length, 3),
                              started_s=round(clock[slot], 3)))
        clock[slot] += length + 0.01
    page = html_report(results, {"command": ["iotests-run"], "timeline": [[t, 8, 2.0] for t in range(600)]}, "t")
    svg = page[page.index('<svg class="timeline"'):page.index("</svg>")]
    bars = re.findall(r'<rect class="bar[^>]* y="([\d.]+)" width="([\d.]+)"', svg)
    assert len(bars) == 700
    assert len({y for y, _ in bars}) == 8 and all(float(w) >= 1 for _, w in bars)
    height = int(re.search(r'height="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    assert height <= 8 * 12 + 60 + 30


HOSTILE = 'x"><img src=x onerror=alert(1)><script>alert(2)</script>\x1b[31m'


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]


@pytest.mark.process
def test_a_merged_shard_that_started_no_run_keeps_its_heading() -> None:
    """A merge request's shard whose runs the change did not affect still says what it was and that it ran nothing."""
    ran, idle = (Run(TestCase(k, Path(k), frozenset()), "qcow2", "file") for k in ("001", "002"))
    results = [Result(ran, Outcome.FAIL, "output mismatch", 1.0, started_s=0.5, shard=1),
               Result(idle, Outcome.NOT_RUN, "not affected by the change (coverage map of 2026-11-30)", shard=2)]
    shards = [{"shard": {"index": i, "total": 2}, "folder": f"shard{i}", "command": ["iotests-run", f"--shard={i}/2"]}
              for i in (1, 2)]
    page = html_report(results, {"shards": shards}, "merged")
    assert page.count('<svg class="timeline"') == 1
    assert "shard 2/2 (shard2)" in page and "--shard=2/2" in page
    assert "started no run: its 1 run(s) were not run" in page


@pytest.mark.process
def test_no_markup_from_test_names_output_or_merged_files_reaches_the_page(tmp_path: Path) -> None:
    """Names, reasons, diffs and meta of a hostile (merged) results.json are text in the browser's DOM, never markup."""
    run = Run(TestCase(f"tests/{HOSTILE}", Path(HOSTILE), frozenset()), HOSTILE, "file")
    result = Result(run, Outcome.FAIL, HOSTILE, 1.0, diff=HOSTILE + "\n" + "y" * 10_000_000,
                    artifacts=f"runs/{HOSTILE}", diagnostics=HOSTILE, leaked=(HOSTILE,),
                    attachments=("javascript:alert(3)", "/etc/passwd", "runs/../../x", f"runs/{HOSTILE}/diff.txt"))
    page = html_report([result], {"command": [HOSTILE], "qemu": {"version": HOSTILE, "source": HOSTILE}},
                       HOSTILE, exists=lambda rel: True)
    assert len(page) < 200_000  # the 10 MB line is cut
    path = tmp_path / "report.html"
    path.write_text(page)
    dom = _browser(path, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    tags = _Tags()
    tags.feed(dom.stdout)
    assert "img" not in tags.tags and tags.tags.count("script") == 1  # only the page's own script
    assert not [k for k, _ in tags.attrs if k.startswith("on")]
    hrefs = [v for k, v in tags.attrs if k == "href"]
    assert hrefs and all(h.startswith(("#run-", "runs/")) for h in hrefs), hrefs
    assert all(re.fullmatch(r"run-[A-Za-z0-9_.-]+", v) for k, v in tags.attrs if k == "id" and v.startswith("run-"))


@pytest.mark.process
def test_the_timeline_shows_every_started_run_where_it_ran(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "sleep 0.5\necho ok\n", out="ok\n")
    fake_tree.add_test("002", "sleep 3600\n", out="")
    fake_tree.add_test("003", "echo bad\n", out="good\n")
    fake_tree.add_test("004", "echo ok\n", out="ok\n", groups="quick")
    Path(f"{fake_tree.iotests}/004").write_text("#!/usr/bin/env bash\n# group: quick\n_supported_fmt raw\necho ok\n")
    results = tmp_path / "results"
    proc = run_cli(["-g", "quick", "--hang-timeout", "2", *fake_tree.args(results)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((results / "results.json").read_text())
    started = {r["test"]: r["started_s"] for r in data["runs"]}
    assert started["004"] is None and all(started[t] is not None and started[t] >= 0 for t in ("001", "002", "003"))
    assert data["timeline"] and all(len(s) == 3 for s in data["timeline"])
    assert max(s[1] for s in data["timeline"]) >= 1  # runs were in flight at some tick
    dom = _browser(results / "report.html", tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    bar = r'<rect class="bar o-([a-z-]+)"[^>]*\swidth="([0-9.]+)"[^>]*>\s*<title>([^<]*)</title>'
    bars = re.findall(bar, dom.stdout)
    assert sorted(b[0] for b in bars) == ["fail", "hang", "pass"]  # one bar per started run, none for 004
    hang = next(b for b in bars if b[0] == "hang")
    hang_s = next(r["duration_s"] for r in data["runs"] if r["test"] == "002")
    assert f"{hang_s:.1f} s" in hang[2] and float(hang[1]) > max(float(b[1]) for b in bars if b[0] != "hang")
    shot = tmp_path / "timeline.png"
    _browser(results / "report.html", tmp_path / "profile", "--window-size=1200,1400", f"--screenshot={shot}")
    assert _rgb("#1a73e8") in _colours(shot)  # the runs-in-flight line is drawn


def _result(i: int, outcome: Outcome = Outcome.PASS, started: float | None = 0.0, duration: float = 1.0,
            combo: tuple[str, str] = ("qcow2", "file")) -> Result:
    key = f"{i:06d}"
    return Result(Run(TestCase(key, Path(key), frozenset()), *combo), outcome, duration_s=duration,
                  started_s=started)


@pytest.mark.unit
@pytest.mark.parametrize("value", [1e300, float("inf"), float("nan"), -5.0])
def test_the_timeline_is_bounded_whatever_the_numbers(value: float) -> None:
    runs = [_result(1, started=value, duration=value), _result(2, started=0.0, duration=value)]
    samples: list[Any] = [[value, value, value], ["x", None, 1], [1], None, [0, 1, None]]
    chart = html.timeline(runs, samples)
    assert chart.startswith('<svg class="timeline"') and len(chart) < 20_000


@pytest.mark.unit
def test_the_timeline_draws_a_bounded_number_of_bars_and_points() -> None:
    runs = [_result(i, started=float(i % 1000), duration=1000.0) for i in range(20_000)]
    samples = [[float(t), 1000, 3.0] for t in range(200_000)]
    chart = html.timeline(runs, samples)
    assert chart.count("<rect") <= html.TIMELINE_BARS and len(chart) < 3_000_000
    assert "not drawn" in chart


@pytest.mark.unit
def test_the_page_is_bounded_however_many_runs_and_says_what_it_left_out() -> None:
    combos = [("qcow2", "file"), ("raw", "file"), ("qed", "nbd")]
    results = [_result(i, Outcome.FAIL if i % 97 == 0 else Outcome.PASS, combo=combo, started=None)
               for i in range(20_000) for combo in combos]
    results += [_result(1, combo=(f"f{i}", "file")) for i in range(html.MATRIX_COLUMNS - len(combos) + 5)]
    page = html.html_report(results, {"qemu": "x", "command": [1, None], "wall_s": "long"}, "merged")
    assert len(page) < 10_000_000
    assert page.count("<tr") <= html.MATRIX_ROWS + 1 and page.count('class="run"') == html.DETAILS
    failing = {f"{i:06d}" for i in range(0, 20_000, 97)}
    assert all(f'title="{key}"' in page for key in failing)  # every test with a problem keeps its row
    assert f"{20_000 - html.MATRIX_ROWS} more tests and 5 more format-protocol columns" in page
    assert all(f"<th>{f}-{p}</th>" in page for f, p in combos)  # the columns with the most runs are kept
    assert f"{len(failing) * 3 - html.DETAILS} more runs that did not pass cleanly" in page
