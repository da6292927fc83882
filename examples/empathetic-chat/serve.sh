#!/usr/bin/env bash
# Serve the chat page at http://127.0.0.1:8000/ with the adapters from train.sh.
#   bash examples/empathetic-chat/serve.sh [RUNS_DIR] [extra lorakit serve flags]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
RUNS="${1:-runs/empathetic-chat}"
shift || true
exec lorakit serve --model smollm2-135m \
  --adapter negative="$RUNS/tone-negative/adapter" \
  --adapter neutral="$RUNS/tone-neutral/adapter" \
  --adapter positive="$RUNS/tone-positive/adapter" \
  --classifier minilm --classifier-adapter mood="$RUNS/mood/adapter" \
  --page "$HERE/index.html" "$@"
