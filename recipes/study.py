"""A study: every cell of a grid of loop runs, then one study report (selftrain/loop/study.py).

    python recipes/study.py config=recipes/configs/default.yaml \
        grid.paradigm=[iter_sft,iter_dpo,iter_sft_dpo] grid.seed=[0,1] out_dir=runs/study

Re-running the same command resumes; `cell=I` runs one cell (one node or GPU group each), then
`report_only=true` writes DIR/study.md and DIR/comparison/.
"""

import sys

from selftrain.loop.study import run_study_recipe

if __name__ == "__main__":
    run_study_recipe(sys.argv[1:])
