"""nox sessions of this repository: kiln's own, the same ones every project gets.

``nox -l`` lists them; ``nox`` runs lint and tests; the CI jobs in ci/kiln.yml run
``nox -s <session>`` (see kiln/nox_sessions.py for why they share the running interpreter).
"""

import kiln.nox_sessions  # noqa: F401  (importing it registers kiln's sessions with nox)
