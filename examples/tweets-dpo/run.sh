#!/usr/bin/env bash
# SFT on tweet sentiment, then DPO from that adapter on right-vs-wrong mood pairs; both
# adapters scored by `lorakit eval` on the same held-out pairs.
#   bash examples/tweets-dpo/run.sh [RUNS_DIR]      (default: runs/tweets-dpo)
# Sizes by environment: TRAIN (tweets, 400), EVAL (held-out tweets per split, 100),
# SFT_STEPS (40), DPO_STEPS (30).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
RUNS="${1:-runs/tweets-dpo}"
mkdir -p "$RUNS"
python "$HERE/make_data.py" "$RUNS/data" --train "${TRAIN:-400}" --eval "${EVAL:-100}"

# 1. SFT: prompt -> the mood word (loss on the answer).
lorakit train --model smollm2-135m --task causal-lm --data "$RUNS/data/sft" \
  --output "$RUNS/sft" --r 8 --max-steps "${SFT_STEPS:-40}" --batch-size 8 --lr 1e-3 \
  --max-eval-samples 24 --overwrite

# 2. DPO from the SFT adapter (it is also the frozen reference): right mood over a wrong one.
lorakit train --model smollm2-135m --task causal-lm --data "$RUNS/data/prefs" \
  --output "$RUNS/dpo" --objective dpo --beta 0.1 --init-adapter "$RUNS/sft/adapter" \
  --max-steps "${DPO_STEPS:-30}" --batch-size 8 --lr 5e-4 --max-eval-samples 24 --overwrite

# 3. Both on the held-out test pairs, rewards measured against the same reference (the base
#    model): reward accuracy, margin, and the task's exact match (greedy answer == the mood).
for stage in sft dpo; do
  lorakit eval --model smollm2-135m --adapter "$RUNS/$stage/adapter" --data "$RUNS/data/prefs" \
    --objective dpo --beta 0.1 --json > "$RUNS/eval-$stage.json"
done
python - "$RUNS" <<'PY'
import json, sys
runs = sys.argv[1]
print("| adapter | reward accuracy | reward margin | exact match | pairs |")
print("|---|---|---|---|---|")
for stage in ("sft", "dpo"):
    m = json.load(open(f"{runs}/eval-{stage}.json"))["metrics"]
    print(f"| {stage} | {m['reward_accuracy']:.3f} | {m['reward_margin']:.3f} | "
          f"{m['exact_match']:.3f} | {m['pairs']} |")
PY
