#!/bin/sh
# Entry point of the backend image (python-requirements makes /code/run.sh the ENTRYPOINT).
# Arguments go to the service: run.sh --self-test checks the installed package end to end.
set -e
exec python3 -m backend "$@"
