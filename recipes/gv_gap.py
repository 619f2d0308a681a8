"""The generation-verification gap of paper B: generate, self- (or cross-) verify, filter, tabulate.

    torchrun --nproc_per_node=K recipes/gv_gap.py config=recipes/configs/gv_gap_default.yaml \
        out_dir=runs/gv_gap [key=value ...]

Every key, stage and output: selftrain/verify/gv_gap.py and docs/verification.md.
"""

import sys

from selftrain import dist
from selftrain.verify.gv_gap import main

if __name__ == "__main__":
    dist.exit_with(main(sys.argv[1:]))
