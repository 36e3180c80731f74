from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.tree.environment import Settings, child_environment, iotests_environment, malloc_perturb
from iotests_run.tree.qemu import QemuTree, open_tree
from support import FakeTree

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(fake_tree: FakeTree) -> QemuTree:
    return open_tree(str(fake_tree.source), str(fake_tree.build), {}, Path("/"))


def env_for(tree: QemuTree, fmt: str, proto: str = "file", user: dict[str, str] | None = None,
            settings: Settings | None = None) -> dict[str, str]:
    return iotests_environment(tree, fmt, proto, python="/usr/bin/python3", test_dir=Path("/t"),
                               sock_dir=Path("/s"), malloc_perturb="42", user_env=user or {},
                               settings=settings)


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


def test_luks_has_key_secret_no_format_option_and_iter_time(tree: QemuTree) -> None:
    env = env_for(tree, "luks")
    assert env["IMGOPTSSYNTAX"] == "true" and env["IMGKEYSECRET"] == "123456"
    assert env["IMGOPTS"] == "iter-time=10"
    assert env["QEMU_IO_OPTIONS"] == "--cache writeback --aio threads"


def test_vmdk_gets_zeroed_grain_unless_given(tree: QemuTree) -> None:
    assert env_for(tree, "vmdk")["IMGOPTS"] == "zeroed_grain=on"
    assert env_for(tree, "vmdk", settings=Settings(imgopts="subformat=monolithicFlat"))["IMGOPTS"] == \
        "subformat=monolithicFlat,zeroed_grain=on"
    assert env_for(tree, "vmdk", settings=Settings(imgopts="zeroed_grain=off"))["IMGOPTS"] == "zeroed_grain=off"


@pytest.mark.parametrize("fmt", ["bochs", "cloop", "dmg"])
def test_non_generic_formats(tree: QemuTree, fmt: str) -> None:
    assert env_for(tree, fmt)["IMGFMT_GENERIC"] == "false"


def test_user_pythonpath_and_options_pass_through(tree: QemuTree) -> None:
    env = env_for(tree, "raw", "nbd", user={"PYTHONPATH": "/mine", "QEMU_IMG_OPTIONS": "-U", "HOME": "/h"})
    assert env["PYTHONPATH"].endswith(":/mine")
    assert env["QEMU_IMG_OPTIONS"] == "-U"
    assert env["IMGPROTO"] == "nbd"
    assert "HOME" not in env


def test_arm_target_gets_virt_machine(fake_tree: FakeTree) -> None:
    (fake_tree.build / "qemu-system-x86_64").rename(fake_tree.build / "qemu-system-aarch64")
    tree = open_tree(str(fake_tree.source), str(fake_tree.build), {}, Path("/"))
    assert env_for(tree, "qcow2")["QEMU_OPTIONS"] == "-nodefaults -display none -accel qtest -machine virt"


def test_child_environment_keeps_user_env_but_drops_gdb_options(tmp_path: Path) -> None:
    env = child_environment({"PATH": "/bin", "GDB_OPTIONS": "x", "IMGFMT": "old"}, {"IMGFMT": "raw"}, tmp_path)
    assert env == {"PATH": "/bin", "IMGFMT": "raw", "TMPDIR": str(tmp_path)}


def test_malloc_perturb_from_environment_or_random() -> None:
    assert malloc_perturb({"MALLOC_PERTURB_": "7"}) == "7"
    values = {int(malloc_perturb({})) for _ in range(200)}
    assert min(values) >= 1 and max(values) <= 254 and len(values) > 1


def test_tests_do_not_see_the_pythonpath_that_found_the_runner() -> None:
    import iotests_run
    from iotests_run.tree.environment import environment_for_tests

    ours = Path(iotests_run.__file__).resolve().parents[1]
    env = environment_for_tests({"PYTHONPATH": f"{ours}:{ours}/_deps:/home/me/lib", "HOME": "/home/me"})
    assert env.variables == {"PYTHONPATH": "/home/me/lib", "HOME": "/home/me"}
    assert "PYTHONPATH" not in environment_for_tests({"PYTHONPATH": f"{ours}/_deps/"}).variables
    assert environment_for_tests({"X": "1"}).variables == {"X": "1"}


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
