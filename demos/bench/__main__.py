"""``python -m demos.bench NAME [options]``: run one benchmark (``--help`` on each)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "actors": "demos.bench.actors",
    "checkpoints": "demos.bench.checkpoints",
    "connectors": "demos.bench.connectors",
    "aggregates": "demos.bench.aggregates",
    "enrichment": "demos.bench.enrichment",
    "joins": "demos.bench.joins",
    "latency": "demos.bench.latency",
    "overload": "demos.bench.overload",
    "serve": "demos.bench.serve",
    "windows": "demos.bench.windows",
    "workers": "demos.bench.workers",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        names = ", ".join(BENCHMARKS)
        print(f"usage: python -m demos.bench {{{names}}} [--help | options]", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(BENCHMARKS[sys.argv[1]])
    module.cli(sys.argv[2:])


if __name__ == "__main__":
    main()
