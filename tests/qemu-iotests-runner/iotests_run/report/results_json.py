"""results.json: the machine-readable record of a run (a contract for CI and tools)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from iotests_run.model import Result
from iotests_run.results.folder import SCHEMA, run_record


@functools.cache
def _record_text(result: Result) -> str:
    return json.dumps(run_record(result))


def results_json_chunks(results: Iterable[Result], meta: Mapping[str, Any]) -> Iterator[str]:
    """The document in pieces, one run per line; each run is serialised once (the file is rewritten after every
    run), and written as it comes (a merge of a million runs holds no second copy of them as one string)."""
    inner = json.dumps({"schema": SCHEMA, **{k: v for k, v in meta.items() if k not in ("runs", "schema")}},
                       indent=2)[1:-1].rstrip()
    yield "{" + inner + ("," if inner else "") + '\n  "runs": [\n    '
    for index, result in enumerate(sorted(results, key=lambda r: (r.run.combo, r.run.test.key))):
        yield (",\n    " if index else "") + _record_text(result)
    yield "\n  ]\n}\n"


def results_json(results: Iterable[Result], meta: Mapping[str, Any]) -> str:
    """The document, one run per line."""
    return "".join(results_json_chunks(results, meta))
