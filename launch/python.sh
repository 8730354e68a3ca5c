#!/usr/bin/env bash
# Sourced by the launchers: FERGATE_PY = the Python that runs fergate. In order: $PYTHON,
# the active virtual environment, the .venv of this repository, python3. It must import fergate.
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then FERGATE_PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ]; then FERGATE_PY=$VIRTUAL_ENV/bin/python
elif [ -x "$_repo/.venv/bin/python" ]; then FERGATE_PY=$_repo/.venv/bin/python
else FERGATE_PY=python3; fi
if ! "$FERGATE_PY" -c "import fergate" 2>/dev/null; then
  echo "launch: $FERGATE_PY cannot import fergate: activate the environment it is installed in, or set PYTHON=/path/to/python" >&2
  exit 2
fi
