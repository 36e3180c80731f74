"""One home per concept: every grouping of outcomes lives on Outcome (a new outcome without a letter or a
grouping fails here), and every option of the parser is a field of the typed Options."""

import pytest

from iotests_run import model
from iotests_run.model import Outcome
from iotests_run.plan import history

pytestmark = pytest.mark.unit


def test_every_outcome_has_a_history_letter_entry_and_letters_are_unique() -> None:
    assert set(model._LETTERS) == set(Outcome)
    letters = [o.letter for o in Outcome if o.letter is not None]
    assert len(letters) == len(set(letters)) and all(len(x) == 1 for x in letters)
    assert all(Outcome.from_letter(str(o.letter)) is o for o in Outcome if o.letter is not None)


def test_what_the_history_remembers_and_counts_as_failed() -> None:
    remembered = {o for o in Outcome if o.letter is not None}
    assert remembered == {Outcome.PASS, Outcome.FAIL, Outcome.TIMEOUT, Outcome.HANG, Outcome.CRASH, Outcome.FLAKY}
    assert {o for o in Outcome if o.failed_here} == remembered - {Outcome.PASS}
    assert Outcome.ERROR.is_failure and not Outcome.ERROR.failed_here  # the machine's failure, not the test's
    assert history.LETTERS == {str(o.letter) for o in remembered}
    assert history.Recent("pfyhtcp").failed == 5


def test_only_runs_that_ended_by_themselves_have_whole_counters() -> None:
    assert {o for o in Outcome if o.counters_whole} == {Outcome.PASS, Outcome.FAIL, Outcome.NOT_RUN}
    assert all(o.ran_to_its_end for o in Outcome if o.counters_whole)


def test_every_option_of_the_parser_is_a_field_of_options_and_back() -> None:
    from dataclasses import fields

    from iotests_run.cli.options import Options, make_parser
    from iotests_run.run.admission import Cpus

    parser = make_parser(Cpus(2, None))
    dests = {a.dest for a in parser._actions if a.dest not in ("help", "version")}
    assert dests == {f.name for f in fields(Options)}
    options = Options.of(parser.parse_args(["-f", "raw", "--affected-by", "HEAD", "--coverage-map", "m.gz"]))
    assert options.format == ["raw"] and options.change_asked and options.recording is None
    assert Options.of(parser.parse_args(["--coverage-map", "m.gz"])).recording is not None


def test_results_json_meta_is_one_typed_record_written_and_read_back() -> None:
    from iotests_run.results.meta import Meta

    meta = Meta(tool="iotests-run 0.1.0", qemu={"version": "7.2.0", "source": "/s", "build": "/b"},
                command=["iotests-run", "-f", "raw"], started="2026-12-07T15:00:00+00:00", jobs=4, planned=3,
                environment={"raw-file": {"IMGFMT": "raw"}}, history_tree="t1", complete=True,
                cpu_s={"runner": 1.5, "children": 9.0}, timeline=[[0.0, 1, 0.5]])
    data = meta.to_dict()
    assert "affected" not in data and "shards" not in data  # only when set
    assert Meta.from_dict(data) == meta
    # a shard's hostile fields: the wrong type is dropped, never carried into a page or a message
    bad = Meta.from_dict({"qemu": "x", "command": [1, None], "wall_s": "long", "planned": -3, "complete": "yes",
                          "cpu_s": {"runner": float("inf")}, "unknown": 1})
    assert bad == Meta()
