"""What a hostile or careless input must not do: delete what is not ours, pass secrets on, crash the runner."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import psutil
import pytest

from support import FakeTree, run_cli
from test_cli_errors import expect_usage_error

pytestmark = pytest.mark.process


@pytest.fixture
def tree(fake_tree: FakeTree, tmp_path: Path) -> FakeTree:
    fake_tree.add_test("001", f"touch {tmp_path}/started\necho ok\n", out="ok\n", groups="quick")
    fake_tree.add_test("002", "echo bad\n", out="good\n", groups="quick")
    return fake_tree


def tree_args(tree: FakeTree, results: Path, *more: str) -> list[str]:
    return [*tree.args(results), "--history", str(results.parent / "history.json"), *more]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() if p.is_file() else "/" for p in sorted(folder.rglob("*"))}


# Data loss -----------------------------------------------------------------------------------------

def test_a_folder_that_is_not_ours_is_refused_untouched(tree: FakeTree, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "runs" / "thesis").mkdir(parents=True)
    (home / "runs" / "thesis" / "chapter1.tex").write_text("years of work")
    (home / "summary.txt").write_text("my summary")
    before = snapshot(home)
    expect_usage_error(tmp_path, tree_args(tree, home), str(home), "not an iotests-run results folder")
    assert snapshot(home) == before


def test_our_folder_is_marked_reused_and_a_pre_marker_one_taken_over(tree: FakeTree, tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert run_cli(tree_args(tree, results)).returncode == 1
    assert (results / ".iotests-run").is_file() and (results / "runs" / "qcow2-file" / "002").is_dir()
    (results / "runs" / "qcow2-file" / "stale").mkdir()
    assert run_cli(tree_args(tree, results, "001")).returncode == 0
    assert not (results / "runs" / "qcow2-file" / "stale").exists()  # ours: the previous run's files replaced
    (results / ".iotests-run").unlink()  # as written by a version before the marker
    assert run_cli(tree_args(tree, results, "001")).returncode == 0
    assert (results / ".iotests-run").is_file()


def test_a_second_invocation_on_a_held_folder_stops_at_once(tree: FakeTree, tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert run_cli(tree_args(tree, results, "001")).returncode == 0
    (tmp_path / "started").unlink()
    before = snapshot(results)
    fd = os.open(results / ".iotests-run", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        expect_usage_error(tmp_path, tree_args(tree, results, "001"), "in use by another iotests-run", str(results))
    finally:
        os.close(fd)
    assert snapshot(results) == before


def test_output_paths_are_checked_before_anything_is_touched(tree: FakeTree, tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert run_cli(tree_args(tree, results)).returncode == 1
    (tmp_path / "started").unlink()
    before = snapshot(results)
    expect_usage_error(tmp_path, [*tree_args(tree, results), "--junit", str(tmp_path)], "--junit", "is a folder")
    notes = tmp_path / "notes.txt"
    notes.write_text("not xml at all")
    expect_usage_error(tmp_path, [*tree_args(tree, results), "--junit", str(notes)], "not a JUnit XML file")
    expect_usage_error(tmp_path, [*tree.args(results), "--history", str(notes)], "--history", str(notes))
    assert notes.read_text() == "not xml at all"
    expect_usage_error(tmp_path, [*tree_args(tree, results), "--scratch", str(results / "runs")],
                       "--scratch", "inside the results folder")
    assert snapshot(results) == before


def test_merge_checks_everything_before_it_writes(tree: FakeTree, tmp_path: Path) -> None:
    shard = tmp_path / "shard"
    assert run_cli(tree_args(tree, shard)).returncode == 1
    (tmp_path / "started").unlink()
    before = snapshot(shard)
    cases = [
        (["merge", str(shard / "runs" / "x"), str(shard)], "overlaps"),
        (["merge", str(shard), str(shard)], "overlaps"),
        (["merge", str(tmp_path / "out"), str(shard), str(shard)], "named twice"),
        (["merge", str(tmp_path / "out"), str(shard), str(tmp_path / "nothing")], "no results.json"),
    ]
    for args, needle in cases:
        expect_usage_error(tmp_path, args, needle)
        assert snapshot(shard) == before
        assert not (tmp_path / "out").exists() and not (shard / "runs" / "x").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.txt").write_text("mine")
    expect_usage_error(tmp_path, ["merge", str(mine), str(shard)], "not an iotests-run results folder")
    assert snapshot(mine) == {"paper.txt": "mine"}


def test_hostile_results_json_is_one_line_not_a_traceback(tree: FakeTree, tmp_path: Path) -> None:
    base = {"test": "002", "format": "qcow2", "protocol": "file", "outcome": "fail", "duration_s": 1.0}
    bad_runs: dict[str, object] = {
        "missing field": [{k: v for k, v in base.items() if k != "format"}],
        "unknown outcome": [{**base, "outcome": "exploded"}],
        "duration text": [{**base, "duration_s": "slow"}],
        "duration nan": json.dumps([base]).replace("1.0", "NaN"),
        "not records": [1],
        "mixed types": [{**base, "test": ["002"]}],
        "artifacts escape": [{**base, "artifacts": "runs/../../../etc"}],
        "attachment outside": [{**base, "attachments": ["/etc/shadow"]}],
        "markup name": [{**base, "test": 'x"><img src=x onerror=alert(1)>'}],
        "deep nesting": "[" * 100_000 + "]" * 100_000,
    }
    for name, runs in bad_runs.items():
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        text = runs if isinstance(runs, str) else json.dumps(runs)
        (folder / "results.json").write_text('{"complete": true, "runs": ' + text + "}")
        expect_usage_error(tmp_path, ["merge", str(tmp_path / "out"), str(folder)], "results.json")
        assert not (tmp_path / "out").exists(), name
        expect_usage_error(tmp_path, [*tree_args(tree, folder), "--last-failed"], "--last-failed")


def test_bind_mount_source_survives_sandbox_cleanup_through_a_symlinked_scratch(fake_tree: FakeTree,
                                                                                 tmp_path: Path) -> None:
    """--no-isolation --scratch LINK: a passing test's bind mount is released, never emptied through."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root to bind-mount (inside a private mount namespace)")
    import tempfile

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # sandboxes need short paths (unix sockets)
    (short / "real").mkdir()
    (short / "link").symlink_to(short / "real")
    fake_tree.add_test("001", f'mkdir "$TEST_DIR/m" && mount --bind {precious} "$TEST_DIR/m" && echo ok\n', out="ok\n")
    argv = [sys.executable, "-m", "iotests_run", "001", "--no-isolation", "--scratch", str(short / "link"),
            *tree_args(fake_tree, tmp_path / "results")]
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (precious / "data.txt").read_text() == "keep me"
    assert not list((short / "real").iterdir())  # and the sandbox is gone
    shutil.rmtree(short)


def test_removal_never_crosses_a_mount_even_when_it_cannot_be_released(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root to bind-mount (inside a private mount namespace)")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    (tmp_path / "box" / "deep" / "m").mkdir(parents=True)
    (tmp_path / "box" / "file").write_text("ours")
    code = (f"from pathlib import Path; from iotests_run.run.sandbox import remove_tree; "
            f"print(remove_tree(Path('{tmp_path}/box')))")
    script = f"mount --bind {tmp_path}/precious {tmp_path}/box/deep/m && {sys.executable} -c \"{code}\""
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert proc.stdout.split() == ["False"], proc.stdout + proc.stderr  # the mount kept its folders
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"
    assert not (tmp_path / "box" / "file").exists()  # what was ours is gone


def test_locked_folders_a_test_leaves_do_not_change_its_verdict(fake_tree: FakeTree, tmp_path: Path) -> None:
    """As non-root: a mode-000 file and read-only folders in TEST_DIR, on a pass and on a failure."""
    import shutil

    top = Path(os.environ.get("TMPDIR", "/tmp")) / f"iotr-nonroot-{os.getpid()}"
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(mode=0o777)
    top.chmod(0o777)
    try:
        from support import make_fake_tree

        tree = make_fake_tree(top / "t")
        lock = ('mkdir -p "$TEST_DIR/ro/inner" && echo x > "$TEST_DIR/ro/inner/f" && chmod 000 "$TEST_DIR/ro/inner/f" '
                '&& chmod 500 "$TEST_DIR/ro/inner" "$TEST_DIR/ro" && chmod 500 "$TEST_DIR"\n')
        tree.add_test("001", lock + "echo ok\n", out="ok\n")
        tree.add_test("002", lock + "echo bad\n", out="ok\n")
        for d in [top, *top.rglob("*")]:
            if d.is_dir():
                d.chmod(0o777)
        scratch = top / "scratch"
        scratch.mkdir(mode=0o777)
        scratch.chmod(0o777)
        for _ in range(2):  # the second time, nothing the first left gets in the way
            argv = ["001", "002", *tree.args(top / "results"), "--history", str(top / "h.json"),
                    "--scratch", str(scratch), "--no-isolation"]
            proc = run_cli(argv, cwd=top, as_nobody=True, env=dict(os.environ, HOME=str(top)))
            assert proc.returncode == 1, proc.stdout + proc.stderr
            runs = {r["test"]: r for r in json.loads((top / "results" / "results.json").read_text())["runs"]}
            assert (runs["001"]["outcome"], runs["002"]["outcome"]) == ("pass", "fail"), runs
            assert "runner error" not in runs["002"]["reason"]
            assert (top / "results" / "runs" / "qcow2-file" / "002" / "scratch" / "ro" / "inner").is_dir()
            assert not list(scratch.iterdir())  # no sandbox left behind
    finally:
        for d in top.rglob("*"):
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o700)
        shutil.rmtree(top, ignore_errors=True)


# Names, files and text from tests ------------------------------------------------------------------

def test_a_test_named_with_markup_is_refused(tree: FakeTree, tmp_path: Path) -> None:
    tree.add_test('tests/x"><img src=x onerror=alert(1)>', "echo hi\n", out="hi\n")
    expect_usage_error(tmp_path, tree_args(tree, tmp_path / "r"), "refused test", "letters, digits and -_.")
    (tree.iotests / 'tests/x"><img src=x onerror=alert(1)>').unlink()
    tree.add_test("tests/ok\nok 99 forged", "echo hi\n", out="hi\n")
    expect_usage_error(tmp_path, tree_args(tree, tmp_path / "r"), "refused test", "ok\\nok 99 forged")


def test_folders_and_dangling_links_named_like_tests_are_no_tests(tree: FakeTree, tmp_path: Path) -> None:
    (tree.iotests / "003").mkdir()
    (tree.iotests / "004").symlink_to(tree.iotests / "gone")
    (tree.iotests / "tests").mkdir(exist_ok=True)
    (tree.iotests / "tests" / "dir").mkdir()
    Path(f"{tree.iotests}/tests/dir.out").write_text("")
    proc = run_cli(tree_args(tree, tmp_path / "r", "-g", "quick"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.rstrip().endswith("1 passed, 1 failed, 0 skipped")


def test_bad_files_and_values_named_on_the_command_line(tree: FakeTree, tmp_path: Path) -> None:
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"002 qcow2-file # caf\xe9\n")
    expect_usage_error(tmp_path, tree_args(tree, tmp_path / "r", "--quarantine", str(latin)), "not UTF-8")
    expect_usage_error(tmp_path, tree_args(tree, tmp_path / "r", "--quarantine", "/dev/zero"), "not a regular file")
    expect_usage_error(tmp_path, tree_args(tree, tmp_path / "r", "--shard", "1/1000000000"), "bad shard")
    env = dict(os.environ, IOTESTS_RUN_JOBS="abc")
    expect_usage_error(tmp_path, tree_args(tree, tmp_path / "r"), "IOTESTS_RUN_JOBS: abc", env=env)
    env = dict(os.environ, IOTESTS_RUN_ARGS="-f raw")
    proc = run_cli(tree_args(tree, tmp_path / "r", "001", "-f", "qcow2"), env=env)
    assert proc.returncode == 0 and "qcow2-file" in proc.stdout and "raw-file" not in proc.stdout, proc.stdout


def test_escape_sequences_from_tests_are_shown_not_obeyed(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", r"""printf 'skip\033]0;pwned\007\033[2J' > "$TEST_DIR/001.notrun"
""", out="")
    fake_tree.add_test("002", r"""printf 'bad\033[31m red\n'
""", out="good\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r", "-v"))
    assert proc.returncode == 1
    out = proc.stdout + (tmp_path / "r" / "summary.txt").read_text()
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31m red" in proc.stdout  # the -v diff, shown


def test_merge_exits_as_the_shards_did_when_their_failures_were_quarantined(tree: FakeTree, tmp_path: Path) -> None:
    quarantine = tmp_path / "known-flaky.txt"
    quarantine.write_text("002\n")
    shards = []
    for i in (1, 2):
        shards.append(tmp_path / f"shard{i}")
        proc = run_cli(tree_args(tree, shards[-1], "--shard", f"{i}/2", "--quarantine", str(quarantine)))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_cli(["merge", str(tmp_path / "merged"), *map(str, shards)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Quarantined (reported, not failing the job): qcow2-file 002" in proc.stdout
    proc = run_cli(tree_args(tree, tmp_path / "plain"))
    assert proc.returncode == 1
    assert run_cli(["merge", str(tmp_path / "merged2"), str(tmp_path / "plain")]).returncode == 1


# Daemons that drop the marker, without cgroups ----------------------------------------------------

# A daemon that strips the environment (and so the marker) and leaves the test's session.
STRIPPED = 'setsid env -i {what} </dev/null >/dev/null 2>&1 &\nsleep 0.5\necho ok\n'


def sleepers(tag: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if tag in " ".join(p.info["cmdline"] or [])]


def test_a_daemon_without_the_marker_is_still_caught_without_cgroups(fake_tree: FakeTree, tmp_path: Path) -> None:
    tag = f"36{os.getpid() % 1000:03}"  # a sleep nobody else runs
    fake_tree.add_test("001", STRIPPED.format(what=f"sleep {tag}1"), out="ok\n")
    fake_tree.add_test("002", f"env -i sleep {tag}2 </dev/null >/dev/null 2>&1 &\nsleep 0.5\necho ok\n", out="ok\n")
    fake_tree.add_test("003", "sleep 0.3\necho ok\n", out="ok\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r", "--no-isolation", "-j", "1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["test"]: r for r in json.loads((tmp_path / "r" / "results.json").read_text())["runs"]}
    assert [p for p in runs["001"]["leaked"] if f"sleep {tag}1" in p], runs["001"]
    assert [p for p in runs["002"]["leaked"] if f"sleep {tag}2" in p], runs["002"]
    assert runs["003"]["leaked"] == []
    assert not sleepers(tag)


def test_orphans_of_parallel_runs_go_to_their_run_or_are_named_at_the_end(fake_tree: FakeTree,
                                                                           tmp_path: Path) -> None:
    tag = f"37{os.getpid() % 1000:03}"
    # 001 and 002 overlap: a setsid'd daemon of either could be the other's, one in the test's session cannot
    fake_tree.add_test("001", "sleep 0.5\n" + STRIPPED.format(what=f"sleep {tag}1"), out="ok\n")
    fake_tree.add_test("002", f"env -i sleep {tag}2 </dev/null >/dev/null 2>&1 &\nsleep 2\necho ok\n", out="ok\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r", "--no-isolation", "-j", "2", "--fixed-jobs"))
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    runs = {r["test"]: r for r in data["runs"]}
    assert [p for p in runs["002"]["leaked"] if f"sleep {tag}2" in p], runs["002"]  # by its session
    assert runs["001"]["leaked"] == []
    assert [o for o in data["orphans"] if f"sleep {tag}1" in o and "qcow2-file 001 or qcow2-file 002" in o], data
    assert f"sleep {tag}1" in proc.stdout
    assert not sleepers(tag)


def test_an_adopted_daemon_that_exits_is_reaped_as_init_would(fake_tree: FakeTree, tmp_path: Path) -> None:
    """A test that kills its daemon and waits for it to go (kill -0) must not wait on a zombie of the runner."""
    body = ('(setsid env -i sleep 3600 </dev/null >/dev/null 2>&1 & echo $! > "$TEST_DIR/pid")\n'  # an orphan
            'pid=$(cat "$TEST_DIR/pid")\nsleep 0.3\nkill $pid\n'
            "for i in $(seq 50); do kill -0 $pid 2>/dev/null || { echo gone; exit 0; }; sleep 0.1; done\n"
            "echo still there\n")
    fake_tree.add_test("001", body, out="gone\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r", "--no-isolation"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_fifo_where_the_runner_reads_a_tests_file_does_not_block_it(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", 'mkfifo "$TEST_DIR/001.casenotrun"\necho ok\n', out="ok\n")
    fake_tree.add_test("002", 'mkfifo "$TEST_DIR/002.notrun"\necho ok\n', out="ok\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r"), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
