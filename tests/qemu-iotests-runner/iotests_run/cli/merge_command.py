"""`iotests-run merge OUT DIR... [--history FILE]`: its own argv, then results.merge joins the shards and
report.writer writes what a single run would."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from iotests_run import __version__
from iotests_run.cli.exits import EXIT_USAGE, exit_status
from iotests_run.errors import Parser
from iotests_run.plan import history
from iotests_run.report.writer import incomplete, write_machine_reports, write_people_reports
from iotests_run.results.merge import merge_folders


def main(argv: Sequence[str]) -> int:
    p = Parser(prog="iotests-run merge", description="Join the results folders of shards into one.")
    p.add_argument("out", type=Path, help="merged results folder")
    p.add_argument("inputs", type=Path, nargs="+", metavar="DIR", help="results folders of the shards")
    p.add_argument("--history", metavar="FILE", type=Path,
                   help="record the merged runs' durations and outcomes in this duration history")
    args = p.parse_args(argv)
    merged = merge_folders(args.out, args.inputs, ["iotests-run", "merge", *argv], args.history)
    out, results, meta = merged.claim.path, merged.results, merged.meta
    for warning in merged.warnings:
        print(f"iotests-run merge: warning: {warning}", file=sys.stderr)
    if merged.left_out > len(merged.warnings):
        print(f"iotests-run merge: warning: {merged.left_out - len(merged.warnings)} more files of the inputs' runs/ "
              "left out (links, FIFOs, devices or beyond the caps)", file=sys.stderr)
    if meta.missing_shards:
        print(f"iotests-run merge: not among the inputs: shard {', '.join(meta.missing_shards)}; "
              "the merged results are incomplete", file=sys.stderr)
    failed = write_machine_reports(out, results, meta)
    title = f"iotests-run {__version__}: merged {len(args.inputs)} results folders"
    text, more = write_people_reports(out, results, meta, title, meta.wall_s or 0.0)
    print(text, end="")
    if failed or more:
        print(f"iotests-run merge: {incomplete(out, failed + more, len(results))}", file=sys.stderr)
        return EXIT_USAGE
    if args.history is not None and merged.tree is not None:  # what the complete shards ran, as they would
        history.save(args.history, merged.tree, [r for r in results if (meta.shards or [])[r.shard - 1]["complete"]])
    return exit_status(results, complete=meta.complete, strict_flaky=meta.strict_flaky)
