"""Run every injected bug (tools/bugs.d/) through iotests-run and say whether its explanation names the cause.

    tools/bugs [--only NAME,...] [--version 7.2|10.0] [--build-only] [--hang-timeout 8] [--timeout 180]

Each bug is a dormant patch in the bug tree of its QEMU version (tools/bugtrees.py: a copy of the
reference sources with every bug's patch applied, built once per set of patches); its environment
variable wakes it, and iotests-run passes that variable on to the test (--pass-env). Printed: a table
of bug, version, outcome, the first line of the run's explanation, and whether that line names the
cause (bug.json's "expect" matches it). Results are kept in <cache>/bugs-results/<name>/.
Exit status: 0 when every bug's cause is named, 1 otherwise, 2 for a bad bug.json or option.
"""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from iotests_run.errors import UsageError
from iotests_tools import bugtrees


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="bug names, comma separated")
    p.add_argument("--version", choices=bugtrees.VERSIONS, help="only this QEMU version's bugs")
    p.add_argument("--build-only", action="store_true", help="build the bug trees and stop (make bug-trees)")
    p.add_argument("--hang-timeout", type=float, default=8.0,
                   help="seconds; below the 10 s after which common.qemu gives up on a QEMU that does not answer")
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args()
    try:
        chosen = bugtrees.bugs(args.version)
    except UsageError as exc:
        print(f"bugs: {exc}", file=sys.stderr)
        return 2
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {b.name for b in chosen}
        if unknown:
            print(f"bugs: no such bug: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        chosen = [b for b in chosen if b.name in names]
    if args.build_only:
        for version in sorted({b.version for b in chosen} or set(bugtrees.VERSIONS)):
            src, build = bugtrees.bug_tree(version)
            print(f"QEMU_SOURCE={src}\nQEMU_BUILD={build}")
        for version in sorted({b.version for b in chosen if b.kind == "sanitizer"}):
            sanitizer_bug = next(b for b in chosen if b.version == version and b.kind == "sanitizer")
            src, build = bugtrees.bug_tree(version, *bugtrees.variant_of(sanitizer_bug))
            print(f"QEMU_SOURCE={src}\nQEMU_BUILD={build}")
        return 0
    rows, named = [], 0
    for bug in chosen:
        bugtrees.say(f"{bug.name} ({bug.version}): running {bug.format} {bug.test}")
        got = bugtrees.run_bug(bug, bugtrees.cache_dir() / "bugs-results" / bug.name,
                               hang_timeout=args.hang_timeout, timeout=args.timeout)
        named += got.named
        rows.append([bug.name, bug.version, got.outcome, got.first_line or f"(none; reason: {got.reason[:120]})",
                     "yes" if got.named else "no"])
        print(f"{bug.name}: {got.outcome}: {got.first_line}", file=sys.stderr, flush=True)
    print(tabulate(rows, headers=["bug", "version", "outcome", "explanation (first line)", "cause named"],
                   tablefmt="github", disable_numparse=True))
    print(f"\n{named} of {len(chosen)} bugs named on the explanation's first line")
    return 0 if named == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
