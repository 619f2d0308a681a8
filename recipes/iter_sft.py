"""Iterative SFT (paper A): every step after M1 is SFT on the model's own correct answers.

    torchrun --nproc_per_node=K recipes/iter_sft.py config=recipes/configs/default.yaml [key=value ...]

Keys: out_dir= (default runs/<name>), model=, task=, iterations=, n_samples=, and every nested
setting (eval.n_samples=, sft.lr=, ...; see selftrain/loop/config.py). Re-running the same command
resumes a killed run. The report lands in <out_dir>/report.md.
"""

from selftrain.loop.recipe import run_loop_recipe

if __name__ == "__main__":
    run_loop_recipe("iter_sft")
