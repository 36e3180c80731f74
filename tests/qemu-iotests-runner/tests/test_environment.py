"""tree/environment.py: the environment a test gets, as check's, through the real runner too."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from iotests_run.tree.environment import Settings, child_environment, iotests_environment, malloc_perturb
from iotests_run.tree.qemu import QemuTree, open_tree
from support import FakeTree, run_cli, runs_by_test


@pytest.fixture
def tree(fake_tree: FakeTree) -> QemuTree:
    return open_tree(str(fake_tree.source), str(fake_tree.build), {}, Path("/"))


def env_for(tree: QemuTree, fmt: str, proto: str = "file", user: dict[str, str] | None = None,
            settings: Settings | None = None) -> dict[str, str]:
    return iotests_environment(tree, fmt, proto, python="/usr/bin/python3", test_dir=Path("/t"),
                               sock_dir=Path("/s"), malloc_perturb="42", user_env=user or {},
                               settings=settings)


@pytest.mark.unit
def test_qcow2_environment(tree: QemuTree) -> None:
    env = env_for(tree, "qcow2")
    assert env["IMGFMT"] == "qcow2"
    assert env["IMGPROTO"] == "file"
    assert env["QEMU_IO_OPTIONS"] == "--cache writeback --aio threads -f qcow2"
    assert env["QEMU_IO_OPTIONS_NO_FMT"] == "--cache writeback --aio threads"
    assert env["QEMU_OPTIONS"] == "-nodefaults -display none -accel qtest"
    assert env["CACHEMODE"] == "writeback" and env["CACHEMODE_IS_DEFAULT"] == "true"
    assert env["IMGFMT_GENERIC"] == "true" and env["IMGOPTSSYNTAX"] == "false"
    assert env["QEMU_DEFAULT_MACHINE"] == "pc"
    assert env["PYTHONPATH"] == f"{tree.iotests}:{tree.source / 'python'}"
    assert env["SAMPLE_IMG_DIR"] == str(tree.iotests / "sample_images")
    assert env["QSD_PROG"] == str(tree.build / "storage-daemon" / "qemu-storage-daemon")
    assert env["TEST_DIR"] == "/t" and env["SOCK_DIR"] == "/s" and env["MALLOC_PERTURB_"] == "42"
    assert "IMGOPTS" not in env and "IMGKEYSECRET" not in env and "GDB_OPTIONS" not in env


@pytest.mark.unit
def test_luks_has_key_secret_no_format_option_and_iter_time(tree: QemuTree) -> None:
    env = env_for(tree, "luks")
    assert env["IMGOPTSSYNTAX"] == "true" and env["IMGKEYSECRET"] == "123456"
    assert env["IMGOPTS"] == "iter-time=10"
    assert env["QEMU_IO_OPTIONS"] == "--cache writeback --aio threads"


@pytest.mark.unit
def test_vmdk_gets_zeroed_grain_unless_given(tree: QemuTree) -> None:
    assert env_for(tree, "vmdk")["IMGOPTS"] == "zeroed_grain=on"
    assert env_for(tree, "vmdk", settings=Settings(imgopts="subformat=monolithicFlat"))["IMGOPTS"] == \
        "subformat=monolithicFlat,zeroed_grain=on"
    assert env_for(tree, "vmdk", settings=Settings(imgopts="zeroed_grain=off"))["IMGOPTS"] == "zeroed_grain=off"


@pytest.mark.unit
def test_misalign_adds_qemu_io_misalign_before_the_format(tree: QemuTree) -> None:
    """check's -misalign: ` --misalign` after --aio in QEMU_IO_OPTIONS and _NO_FMT, before luks's missing -f."""
    from iotests_run.cli.options import make_parser, settings_of
    from iotests_run.run.admission import Cpus

    for spelling in ("--misalign", "-misalign"):
        settings = settings_of(make_parser(Cpus(2, None)).parse_args([spelling, "-c", "none"]))
        env = env_for(tree, "qcow2", settings=settings)
        assert env["QEMU_IO_OPTIONS"] == "--cache none --aio threads --misalign -f qcow2"
        assert env["QEMU_IO_OPTIONS_NO_FMT"] == "--cache none --aio threads --misalign"
    assert env_for(tree, "luks", settings=Settings(misalign=True))["QEMU_IO_OPTIONS"] == \
        "--cache writeback --aio threads --misalign"
    assert "--misalign" not in env_for(tree, "qcow2")["QEMU_IO_OPTIONS"]


@pytest.mark.unit
@pytest.mark.parametrize("fmt", ["bochs", "cloop", "dmg"])
def test_non_generic_formats(tree: QemuTree, fmt: str) -> None:
    assert env_for(tree, fmt)["IMGFMT_GENERIC"] == "false"


@pytest.mark.unit
def test_user_pythonpath_and_options_pass_through(tree: QemuTree) -> None:
    env = env_for(tree, "raw", "nbd", user={"PYTHONPATH": "/mine", "QEMU_IMG_OPTIONS": "-U", "HOME": "/h"})
    assert env["PYTHONPATH"].endswith(":/mine")
    assert env["QEMU_IMG_OPTIONS"] == "-U"
    assert env["IMGPROTO"] == "nbd"
    assert "HOME" not in env


@pytest.mark.unit
def test_arm_target_gets_virt_machine(fake_tree: FakeTree) -> None:
    (fake_tree.build / "qemu-system-x86_64").rename(fake_tree.build / "qemu-system-aarch64")
    tree = open_tree(str(fake_tree.source), str(fake_tree.build), {}, Path("/"))
    assert env_for(tree, "qcow2")["QEMU_OPTIONS"] == "-nodefaults -display none -accel qtest -machine virt"


@pytest.mark.unit
def test_child_environment_keeps_user_env_but_drops_gdb_options(tmp_path: Path) -> None:
    env = child_environment({"PATH": "/bin", "GDB_OPTIONS": "x", "IMGFMT": "old"}, {"IMGFMT": "raw"}, tmp_path)
    assert env == {"PATH": "/bin", "IMGFMT": "raw", "TMPDIR": str(tmp_path)}


@pytest.mark.unit
def test_malloc_perturb_from_environment_or_random() -> None:
    assert malloc_perturb({"MALLOC_PERTURB_": "7"}) == "7"
    values = {int(malloc_perturb({})) for _ in range(200)}
    assert min(values) >= 1 and max(values) <= 254 and len(values) > 1


@pytest.mark.unit
def test_tests_do_not_see_the_pythonpath_that_found_the_runner() -> None:
    import iotests_run
    from iotests_run.tree.environment import environment_for_tests

    ours = Path(iotests_run.__file__).resolve().parents[1]
    env = environment_for_tests({"PYTHONPATH": f"{ours}:{ours}/_deps:/home/me/lib", "HOME": "/home/me"})
    assert env.variables == {"PYTHONPATH": "/home/me/lib", "HOME": "/home/me"}
    assert "PYTHONPATH" not in environment_for_tests({"PYTHONPATH": f"{ours}/_deps/"}).variables
    assert environment_for_tests({"X": "1"}).variables == {"X": "1"}


@pytest.mark.unit
def test_tests_do_not_get_credentials_but_keep_checks_variables() -> None:
    from iotests_run.tree.environment import environment_for_tests

    user = {"CI_JOB_TOKEN": "t", "GITLAB_TOKEN": "g", "AWS_SECRET_ACCESS_KEY": "a", "REGISTRY_PASSWORD": "r",
            "MY_PASSWD": "p", "GOOGLE_APPLICATION_CREDENTIALS": "c", "OPENAI_API_KEY": "o", "SSH_PRIVATE": "s",
            "HTTP_AUTHORIZATION": "h", "CI_JOB_JWT_V2": "j", "ci_job_token": "lower",
            "IMGKEYSECRET": "123456", "HOME": "/root", "PATH": "/bin", "CI_JOB_ID": "42"}
    env = environment_for_tests(user)
    assert env.variables == {"IMGKEYSECRET": "123456", "HOME": "/root", "PATH": "/bin", "CI_JOB_ID": "42"}
    assert set(env.withheld) == set(user) - set(env.variables)
    kept = environment_for_tests(user, pass_env=["GITLAB_TOKEN"])
    assert kept.variables["GITLAB_TOKEN"] == "g" and "GITLAB_TOKEN" not in kept.withheld


@pytest.mark.process
def test_environment_is_checks_and_folders_are_private(fake_tree: FakeTree, tmp_path: Path) -> None:
    body = f"""\
    set -e
    echo "$IMGFMT $IMGPROTO $QEMU_DEFAULT_MACHINE $CACHEMODE_IS_DEFAULT"
    for d in "$TEST_DIR" "$SOCK_DIR" "$TMPDIR"; do test -d "$d" && test -z "$(ls -A "$d")"; done
    test "${{#SOCK_DIR}}" -lt 60
    touch "$TEST_DIR/mine"
    read -r line || echo "stdin is empty"
    echo "$TEST_DIR" >> {tmp_path}/dirs
    """
    for name in ("001", "002", "003"):
        fake_tree.add_test(name, body, out="{fmt} file pc true\nstdin is empty\n")
    for name in ("001", "002", "003"):
        Path(f"{fake_tree.iotests / name}.out.raw").write_text("raw file pc true\nstdin is empty\n")
        Path(f"{fake_tree.iotests / name}.out.qcow2").write_text("qcow2 file pc true\nstdin is empty\n")
    results = tmp_path / "results"
    proc = run_cli(["-f", "qcow2,raw", "-j", "3", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stdout
    dirs = (tmp_path / "dirs").read_text().split()
    assert len(dirs) == 6 and len(set(dirs)) == 6
    assert not any(Path(d).exists() for d in dirs)  # sandboxes of passed runs are gone


@pytest.mark.process
def test_checks_environment_options_and_skipped_cases(fake_tree: FakeTree, tmp_path: Path) -> None:
    """-c/--nocache, -i and -o set what check's own options set; .casenotrun is kept and shown as check shows it."""
    body = 'echo "$CACHEMODE $CACHEMODE_IS_DEFAULT $AIOMODE $IMGOPTS $QEMU_IO_OPTIONS_NO_FMT"\n'
    fake_tree.add_test("001", body, out="writeback true threads  --cache writeback --aio threads\n")
    Path(f"{fake_tree.iotests}/001.out.nocache").write_text("none false native a=b --cache none --aio native\n")
    fake_tree.add_test("002", 'echo "    [case not run] no pylint here" >> "$TEST_DIR/002.casenotrun"\necho ok\n',
                       out="ok\n")
    results = tmp_path / "results"
    assert run_cli(["001", *fake_tree.args(results)]).returncode == 0
    proc = run_cli(["001", "--nocache", "-i", "native", "-o", "a=b", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stdout  # judged against 001.out.nocache
    proc = run_cli(["002", "--tap", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stderr
    assert "ok 1 qcow2-file 002\n#    [case not run] no pylint here\n" in proc.stdout
    run = runs_by_test(results)[("qcow2", "002")]
    assert (run["outcome"], run["casenotrun"]) == ("pass", "    [case not run] no pylint here\n")
    assert "no pylint here" in (results / "summary.txt").read_text()
    case = next(c for c in ET.parse(results / "junit.xml").getroot().iter("testcase") if c.get("name") == "002")
    assert "[case not run] no pylint here" in (case.findtext("system-out") or "")


@pytest.mark.unit
def test_print_qemu_sets_print_qemu_and_debug_sets_no_variable(tree: QemuTree) -> None:
    assert env_for(tree, "qcow2", settings=Settings(print_qemu=True))["PRINT_QEMU"] == "y"
    assert "PRINT_QEMU" not in env_for(tree, "qcow2")
    assert env_for(tree, "qcow2", settings=Settings(debug=True)) == env_for(tree, "qcow2")


@pytest.mark.process
def test_debug_ends_each_tests_argv_with_d_and_print_qemu_sets_its_variable(fake_tree: FakeTree,
                                                                           tmp_path: Path) -> None:
    """check's -d appends -d to the test's argv (after the interpreter's script too); -p is --print-qemu here."""
    fake_tree.add_test("001", 'echo "args: $* print: ${PRINT_QEMU-unset}"\n', out="args: -d print: y\n")
    fake_tree.add_test("002", "import sys, os\nprint('args:', sys.argv[1:], os.environ.get('PRINT_QEMU'))\n",
                       out="args: ['-d'] y\n", python=True)
    results = tmp_path / "results"
    proc = run_cli(["001", "002", "-d", "--print-qemu", "-j", "2", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stdout
    proc = run_cli(["001", *fake_tree.args(results)])  # without them: "args:  print: unset", a failure
    assert proc.returncode == 1 and runs_by_test(results)[("qcow2", "001")]["outcome"] == "fail"


@pytest.mark.unit
def test_valgrind_and_gdb_set_checks_variables(tree: QemuTree) -> None:
    """-valgrind: VALGRIND_QEMU=y; -gdb: the user's GDB_OPTIONS, localhost:12345 when unset or empty."""
    both = Settings(valgrind=True, gdb=True)
    env = env_for(tree, "qcow2", settings=both)
    assert (env["VALGRIND_QEMU"], env["GDB_OPTIONS"]) == ("y", "localhost:12345")
    assert env_for(tree, "qcow2", user={"GDB_OPTIONS": ""}, settings=both)["GDB_OPTIONS"] == "localhost:12345"
    assert env_for(tree, "qcow2", user={"GDB_OPTIONS": "0.0.0.0:2345"}, settings=both)["GDB_OPTIONS"] == \
        "0.0.0.0:2345"
    plain = env_for(tree, "qcow2", user={"GDB_OPTIONS": "0.0.0.0:2345"})
    assert "VALGRIND_QEMU" not in plain and "GDB_OPTIONS" not in plain
    child = child_environment({"GDB_OPTIONS": "0.0.0.0:2345"}, env_for(tree, "qcow2", settings=both), Path("/tmp"))
    assert child["GDB_OPTIONS"] == "localhost:12345"


@pytest.mark.unit
def test_valgrind_scales_the_limits_and_gdb_has_no_hang_limit() -> None:
    import math

    from iotests_run.cli.options import Options, check_gdb, make_parser
    from iotests_run.errors import UsageError
    from iotests_run.run.admission import Cpus

    def options(*argv: str) -> Options:
        return Options.of(make_parser(Cpus(2, None)).parse_args(list(argv)))

    assert (options().multiplier, options().hang_limit) == (1.0, 120.0)
    assert (options("--valgrind").multiplier, options("--valgrind").hang_limit) == (10.0, 1200.0)
    assert options("-valgrind", "--timeout-multiplier", "3", "--hang-timeout", "10").hang_limit == 30.0
    assert options("--timeout-multiplier", "3").hang_limit == 120.0  # as before: hard limits only
    assert options("-gdb").hang_limit == math.inf
    check_gdb(options("--gdb", "-j", "1"), 5)
    check_gdb(options("--gdb", "-j", "8"), 1)
    with pytest.raises(UsageError, match=r"--gdb with 2 runs: .* add -j 1"):
        check_gdb(options("--gdb", "-j", "8"), 2)


@pytest.mark.process
def test_gdb_and_valgrind_on_the_command_line(fake_tree: FakeTree, tmp_path: Path) -> None:
    """The tests get check's variables; --gdb names the address in each run's start line (--quiet too), and refuses
    parallel runs in one line (exit 2)."""
    fake_tree.add_test("001", 'echo "$VALGRIND_QEMU $GDB_OPTIONS"\n', out="y localhost:12345\n")
    fake_tree.add_test("002", 'echo "$VALGRIND_QEMU $GDB_OPTIONS"\n', out="y localhost:12345\n")
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "GDB_OPTIONS"}
    proc = run_cli(["--gdb", "-valgrind", "-j", "1", "-q", *fake_tree.args(results)], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for test in ("001", "002"):
        assert f"{test}: started; its QEMU waits for gdb at localhost:12345" in proc.stdout
    proc = run_cli(["--gdb", "-j", "2", *fake_tree.args(results)], env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "iotests-run: --gdb with 2 runs: each QEMU waits for a debugger at one address (GDB_OPTIONS): "
        "add -j 1 to run them one at a time, or name one test"]


@pytest.mark.process
def test_valgrinds_report_fails_the_run_as_check_shows_it(fake_tree: FakeTree, tmp_path: Path) -> None:
    """A planted invalid read in a program started as common.rc starts QEMU under VALGRIND_QEMU=y (valgrind
    --error-exitcode=99, its log printed on 99): the run fails, valgrind's report in its diff and output."""
    import shutil
    import subprocess

    if shutil.which("valgrind") is None or shutil.which("cc") is None:
        pytest.skip("needs valgrind and cc")
    source = tmp_path / "bad.c"
    source.write_text("#include <stdlib.h>\nint main(void) { int *p = malloc(4); free(p); return p[0] == 7; }\n")
    subprocess.run(["cc", "-g", "-O0", "-o", str(tmp_path / "bad"), str(source)], check=True)
    fake_tree.add_test("001", f"""\
    log="$TEST_DIR/$$.valgrind" bad={tmp_path}/bad
    if [ "$VALGRIND_QEMU" = y ]; then valgrind --log-file="$log" --error-exitcode=99 "$bad"; else "$bad"; fi
    [ $? = 99 ] && cat "$log"
    echo done
    """, out="done\n")
    results = tmp_path / "results"
    assert run_cli(["001", *fake_tree.args(results)]).returncode == 0  # without valgrind the bug goes unseen
    proc = run_cli(["001", "--valgrind", *fake_tree.args(results)])
    assert proc.returncode == 1, proc.stdout
    run = runs_by_test(results)[("qcow2", "001")]
    assert run["outcome"] == "fail", run
    assert "+==" in (results / run["artifacts"] / "diff.txt").read_text()  # valgrind's lines, as check's diff
    assert "Invalid read of size 4" in (results / run["artifacts"] / "001.out.bad").read_text()
    # the report explains the failure on its first line: the access, the function, where the block was freed
    assert run["reason"].startswith("bad: heap-use-after-free (READ of size 4) in main (bad.c:2); freed in main"), run
    assert run["reason"].endswith("(output mismatch)"), run
    kept = [a for a in run["attachments"] if "/valgrind/" in a]
    assert len(kept) == 1 and kept[0].startswith(f"{run['artifacts']}/valgrind/bad."), run["attachments"]
    assert "Invalid read of size 4" in (results / kept[0]).read_text()
