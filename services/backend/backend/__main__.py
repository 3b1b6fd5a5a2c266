"""``python -m backend``: run the service (or ``--self-test``)."""

import sys

from backend.server import main

sys.exit(main())
