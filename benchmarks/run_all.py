"""`make bench`: run every benchmark in turn and print their tables for BENCHMARKS.md.

Side-by-side with peft (issue #7): train_fixed, train_real, inference, per_row; then the
lorakit-only ones (train_minilm vs the course recipe, serve_load). `--quick` runs each
with the smallest settings to check the scripts themselves. GPU runs: benchmarks/gpu.sh.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = {
    "train_fixed.py": [],
    "train_real.py": [],
    "inference.py": [],
    "per_row.py": [],
    "train_minilm.py": [],
    "serve_load.py": [],
    "quantized_base.py": [],
}
QUICK = {
    "train_fixed.py": ["--steps", "1", "--warmup", "1", "--seq", "32"],
    "train_real.py": ["--quick"],
    "inference.py": ["--repeat", "1"],
    "per_row.py": ["--counts", "1,8", "--rows", "8", "--repeat", "1"],
}

if __name__ == "__main__":
    quick = "--quick" in sys.argv
    failed = 0
    for script, args in SCRIPTS.items():
        if not (HERE / script).exists() or (quick and script not in QUICK):
            continue
        print(f"\n### {script}\n", flush=True)
        extra = QUICK[script] if quick else args
        failed += subprocess.run([sys.executable, str(HERE / script), *extra]).returncode != 0
    sys.exit(1 if failed else 0)
