"""The heavy part of ``test_overload.py``, in a process of its own so that its peak RSS is its
own: ``python -m tests.runtime.support.overload_child LOAD`` runs the overload benchmark's workload
(``demos/bench/overload.py``) with ``LOAD``, a JSON object of ``Load`` fields, and prints its
figures as one JSON object, ``peak_rss_mib`` (``ru_maxrss`` at the end) among them."""

from __future__ import annotations

import json
import sys

from demos.bench.overload import Load, measure
from runtime import configure_logging


def main(argv: list[str]) -> None:
    configure_logging(level="warning")
    print(json.dumps(measure(Load(**json.loads(argv[0])))))


if __name__ == "__main__":
    main(sys.argv[1:])
