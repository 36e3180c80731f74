"""tree/applicability.py: the runs a test declares it does not apply to, read without running it, never started."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.tree.applicability import declarations, not_applicable
from support import FakeTree, run_cli, runs_by_test


def bash(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "t"
    path.write_text("#!/usr/bin/env bash\n# group: quick\n" + body)
    return path


def reason(path: Path, fmt: str, proto: str = "file", python: bool = False) -> str | None:
    return not_applicable(declarations(path, python), fmt, proto, fmt not in ("bochs", "cloop", "dmg"))


@pytest.mark.unit
def test_bash_top_level_declarations(tmp_path: Path) -> None:
    t = bash(tmp_path, "_cleanup()\n{\n    rm -f x\n}\ntrap _cleanup 0\n. ./common.rc\n"
                       "_supported_fmt qcow2 qed\n_supported_proto file nbd\n")
    assert reason(t, "qcow2") is None
    assert reason(t, "raw") == "not suitable for this image format: raw"
    assert reason(t, "qcow2", "ssh") == "not suitable for this image protocol: ssh"
    assert reason(t, "qed", "nbd") is None


@pytest.mark.unit
def test_bash_generic_and_unsupported(tmp_path: Path) -> None:
    t = bash(tmp_path, "_supported_fmt generic\n_unsupported_fmt luks vmdk  # not these\n_supported_proto generic\n"
                       "_unsupported_proto nfs\n")
    assert reason(t, "raw") is None
    assert reason(t, "dmg") == "not suitable for this image format: dmg"  # generic excludes bochs, cloop, dmg
    assert reason(t, "vmdk") == "not suitable for this image format: vmdk"
    assert reason(t, "raw", "nfs") == "not suitable for this image protocol: nfs"
    assert reason(t, "raw", "ssh") is None


@pytest.mark.unit
@pytest.mark.parametrize("body", [
    'if [ "$X" = y ]; then\n_supported_fmt qcow2\nfi\n',           # inside a block
    "_supported_fmt $FORMATS\n",                                     # not a plain word
    "    _supported_fmt qcow2\n",                                    # indented: inside something
    "f()\n{\n_supported_fmt qcow2\n}\n",                             # inside a function
    "_supported_fmt qcow2; echo x\n",                                # compound line
    "case $IMGFMT in\nraw) ;;\n*)\n_supported_fmt qcow2\n;;\nesac\n",  # inside case
])
def test_uncertain_bash_is_left_to_the_run(tmp_path: Path, body: str) -> None:
    assert reason(bash(tmp_path, body), "raw") is None


@pytest.mark.unit
def test_bash_blocks_closed_on_one_line_do_not_hide_later_declarations(tmp_path: Path) -> None:
    t = bash(tmp_path, "for i in 1 2; do echo $i; done\nf() { true; }\nif true; then :; fi\n_supported_fmt qcow2\n")
    assert reason(t, "raw") == "not suitable for this image format: raw"


@pytest.mark.unit
def test_every_supported_fmt_call_must_allow_the_format(tmp_path: Path) -> None:
    t = bash(tmp_path, "_supported_fmt qcow2 raw\n_supported_fmt qcow2\n")
    assert reason(t, "raw") == "not suitable for this image format: raw"


def py(tmp_path: Path, call: str) -> Path:
    path = tmp_path / "p"
    path.write_text(f"#!/usr/bin/env python3\n# group: quick\nimport iotests\nif __name__ == '__main__':\n    {call}\n")
    return path


@pytest.mark.unit
def test_python_declarations(tmp_path: Path) -> None:
    t = py(tmp_path, "iotests.main(supported_fmts=['qcow2', 'qed'], supported_protocols=['file'])")
    assert reason(t, "qcow2", python=True) is None
    assert reason(t, "raw", python=True) == "not suitable for this image format: raw"
    assert reason(t, "qcow2", "nbd", python=True) == "not suitable for this protocol: nbd"
    t = py(tmp_path, "iotests.script_main(test, supported_fmts=['generic'], unsupported_fmts=['luks'])")
    assert reason(t, "raw", python=True) is None
    assert reason(t, "luks", python=True) == "not suitable for this image format: luks"
    assert reason(t, "cloop", python=True) == "not suitable for this image format: cloop"


@pytest.mark.unit
def test_python_generic_protocol_ignores_unsupported(tmp_path: Path) -> None:
    t = py(tmp_path, "iotests.script_initialize(supported_protocols=('generic',), unsupported_protocols=['nbd'])")
    assert reason(t, "raw", "nbd", python=True) is None


@pytest.mark.unit
@pytest.mark.parametrize("call", [
    "iotests.main(supported_fmts=FORMATS)",
    "iotests.main(**options)",
    "iotests.main(supported_fmts=['qcow2'])\n    iotests.main(supported_fmts=['raw'])",
    "iotests.main(supported_fmts=['qcow2'] +",  # a syntax error
])
def test_uncertain_python_is_left_to_the_run(tmp_path: Path, call: str) -> None:
    assert reason(py(tmp_path, call), "vdi", python=True) is None


@pytest.mark.process
def test_runs_declared_not_to_apply_are_not_started(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", f"_supported_fmt raw\ntouch {tmp_path}/started-$IMGFMT\n", out="")
    results = tmp_path / "results"
    proc = run_cli(["-f", "qcow2,raw", *fake_tree.args(results)])
    runs = runs_by_test(results)
    assert runs[("qcow2", "001")]["outcome"] == "not-run"
    assert runs[("qcow2", "001")]["reason"] == "not suitable for this image format: qcow2"
    assert not (tmp_path / "started-qcow2").exists()
    assert (tmp_path / "started-raw").exists()  # (the fake has no common.rc: the raw run fails)
    assert "1 known not to apply" in proc.stdout
    run_cli(["-f", "qcow2", "--no-static-skip", *fake_tree.args(results)])
    assert (tmp_path / "started-qcow2").exists()
