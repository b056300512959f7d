"""``python -m runtime serve SPEC``: the feature service (``docs/service.md``)."""

import sys

from ._service.cli import main

# guarded: worker processes (``--workers``) are spawned, and import this module again
if __name__ == "__main__":
    sys.exit(main(prog="python -m runtime"))
