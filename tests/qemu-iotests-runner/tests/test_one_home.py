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
