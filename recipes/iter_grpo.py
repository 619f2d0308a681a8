"""Online RL in the measured loop: M1 = gold SFT, then every iteration a block of GRPO steps
(`rl:` section; Dr. GRPO with rl.advantage=dr_grpo rl.aggregation=constant), each sampling groups
from the current policy, grading them with the task and taking clipped policy-gradient steps.

    torchrun --nproc_per_node=1 recipes/iter_grpo.py config=recipes/configs/grpo_arith.yaml [key=value ...]

The same evaluation, report, resume and run-folder guard as the offline loops; docs/rl.md.
`recipes/iter_grpo.py paradigm=iter_rloo` runs RLOO instead.
"""

from selftrain.loop.recipe import run_loop_recipe

if __name__ == "__main__":
    run_loop_recipe("iter_grpo")
