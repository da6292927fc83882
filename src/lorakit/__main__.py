"""`python -m lorakit ...`: the CLI, so `torchrun --nproc-per-node N -m lorakit train ...` works."""

import sys

from lorakit.cli import main

if __name__ == "__main__":
    sys.exit(main())
