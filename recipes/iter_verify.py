"""Paper B's iterative self-improvement without gold labels (its Algorithm 1).

    torchrun --nproc_per_node=K recipes/iter_verify.py config=recipes/configs/iter_verify_default.yaml \
        [out_dir=runs/iter_verify] [key=value ...]

Each round t samples N answers per training prompt from f_t, scores them with f_t's own verifier
(`filter=cot_binary`, `mc:top=0.7`, `cot_score:tau=8`, `tournament:rounds=2`, AND ensembles `a&b`),
keeps what passes and trains f_{t+1} by rejection-sampling SFT (`update=sft`) or RPO (`update=rpo`).
`verifier=gold` or `verifier=<model>` fixes the judge; `fixed_verifier=true` judges with f_0 always.
Re-running the same command resumes a killed run. Per-round table: <out_dir>/report.md.
Keys and artifacts: docs/iter_verify.md (settings: selftrain/loop/verify_loop.py, IterVerifyConfig).
"""

from __future__ import annotations

import sys

from selftrain import dist
from selftrain.config import ConfigError, parse_cli
from selftrain.loop.run_folder import exit_cleanly


def main(argv: list[str]) -> int:
    from selftrain.loop.verify_loop import IterVerifyConfig, run_iter_verify

    try:
        cfg = parse_cli(IterVerifyConfig, argv)
    except (ConfigError, ValueError) as err:
        print(f"iter_verify: config error: {err}", file=sys.stderr)
        return 2
    exit_cleanly(lambda: run_iter_verify(cfg))
    if dist.is_main():
        print((cfg.run_dir / "report.md").read_text())
        print(f"report: {cfg.run_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    dist.exit_with(main(sys.argv[1:]))
