"""``python -m runtime serve SPEC``: the feature service (``docs/service.md``)."""

import sys

from ._service.cli import main

sys.exit(main())
