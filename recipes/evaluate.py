"""Evaluate any list of checkpoints with paper A's evaluation (the loop's, without training).

    torchrun --nproc_per_node=K recipes/evaluate.py config=recipes/configs/default.yaml \
        checkpoints=[runs/iter_sft_dpo/iter_1/trainer/model,runs/iter_sft_dpo/iter_3/trainer/model] \
        is_reference=0 out_dir=runs/eval

`is_reference=I` measures IS against checkpoint I (paper A: M1); `baseline=I` is what the report's
progressed/regressed lines compare with. Loop-only keys of a loop config (iterations, n_samples,
sft, dpo, ...) are not accepted here: pass the data/ood/eval sections or a config of their own.
"""

from selftrain.loop.recipe import run_evaluate_recipe

if __name__ == "__main__":
    run_evaluate_recipe()
