"""`make bench`: run every benchmark in turn; paste their tables into BENCHMARKS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["train_minilm.py", "per_row.py", "serve_load.py"]

if __name__ == "__main__":
    failed = 0
    for script in SCRIPTS:
        print(f"\n### {script}\n", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / script)]).returncode != 0
    sys.exit(1 if failed else 0)
