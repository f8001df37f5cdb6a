"""Likelihood evaluation: `python -m edlm_dist.eval --config configs/eval/zero_shot.toml
--checkpoint RUN[,RUN...]` (under torchrun for several ranks), or as a service beside a
training job: `--watch RUN_FOLDER`.

Each checkpoint is scored as the model its run trained: mdlm (NELBO), ar (exact NLL), nce (EDLM
with its denoiser: the valid bound and the paper's estimate), and an mdlm run as EDLM when
`energy.checkpoint` names an energy. Results: one JSON per (checkpoint, set) under
`<run>/eval/` and TensorBoard scalars under `eval/` (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from edlm_dist.config import ConfigError, config_to_toml, exit_on_user_error, parse_cli
from edlm_dist.distributed import init_distributed, shutdown
from edlm_dist.evaluation import EvalService, LikelihoodEvaluator, checkpoints_to_evaluate, format_result


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_cli(argv, description=__doc__, aliases={"--checkpoint": "eval.checkpoint", "--watch": "eval.watch"})
    cfg = args.config
    if args.print_config:
        print(config_to_toml(cfg), end="")
        return
    if bool(cfg.eval.checkpoint) == bool(cfg.eval.watch):
        raise ConfigError("give exactly one of --checkpoint (eval.checkpoint) and --watch (eval.watch)")
    try:
        env = init_distributed(cfg.training.device, cfg.parallel.backend, cfg.parallel.collective_timeout_s)
        evaluator = LikelihoodEvaluator(cfg, env)
        if cfg.eval.watch:
            EvalService(cfg, env, evaluator).run()
            return
        for ckpt in checkpoints_to_evaluate(cfg):
            for result in evaluator.evaluate_checkpoint(ckpt):
                print(format_result(result))
        evaluator.close()
    finally:
        shutdown()


if __name__ == "__main__":
    main()
