"""Likelihood evaluation: `python -m edlm_dist.eval --config configs/eval/zero_shot.toml
--checkpoint RUN[,RUN...] [--out FOLDER] [--overwrite]` (under torchrun for several ranks), or as a
service beside a training job: `--watch RUN_FOLDER`. `--checkpoint`, as in `edlm_dist.sample`,
names the runs whose models are read: here the runs (or step_<8-digit step> folders) scored.

Each checkpoint is scored as the model its run trained: mdlm (NELBO), ar (exact NLL), nce (EDLM
with its denoiser: the valid bound and the paper's estimate), and an mdlm run as EDLM when
`energy.checkpoint` names an energy. Results go to the run's results folder, `<run>/eval`, or
`<FOLDER>/<run folder name>` with `--out FOLDER` (eval.output): one JSON per (checkpoint, set) at
`<model>/<set>_<split>/step_<8-digit step>.json` and TensorBoard scalars under `eval/` in `tb/`
(docs/evaluation.md). A training run folder or a sampling output folder is refused as a results
folder. One-shot mode refuses to replace existing results unless --overwrite; --watch keeps them
as its record of what is done, and records a checkpoint it cannot read (after a few tries) as
damaged beside them, then goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

from edlm_dist.config import ConfigError, EvalProgram, config_to_toml, exit_on_user_error, parse_cli
from edlm_dist.distributed import init_runtime, shutdown
from edlm_dist.evaluation import EvalService, LikelihoodEvaluator, checkpoints_to_evaluate, format_result

OVERWRITE = "--overwrite"


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_cli(EvalProgram, argv, description=__doc__, aliases={
        "--checkpoint": ("eval.checkpoint", "the runs whose models are read: those scored (comma-separated)"),
        "--watch": ("eval.watch", "a training run folder: score each checkpoint it commits"),
        "--out": ("eval.output", "the folder of the results")},
        switches={OVERWRITE: "one-shot mode: replace results that exist already"})
    cfg = args.config
    if args.print_config:
        print(config_to_toml(cfg), end="")
        return
    if bool(cfg.eval.checkpoint) == bool(cfg.eval.watch):
        raise ConfigError("give exactly one of --checkpoint (eval.checkpoint) and --watch (eval.watch)")
    overwrite = OVERWRITE in args.switches
    if cfg.eval.watch and overwrite:
        raise ConfigError("--overwrite does not go with --watch: the service keeps the results it finds as its "
                          "record of what is done (delete them to score those checkpoints again)")
    try:
        env = init_runtime(cfg.runtime)
        evaluator = LikelihoodEvaluator(cfg, env)
        if cfg.eval.watch:
            EvalService(cfg, env, evaluator).run()
            return
        ckpts = checkpoints_to_evaluate(cfg)
        evaluator.check_outputs(ckpts, overwrite)
        for ckpt in ckpts:
            for result in evaluator.evaluate_checkpoint(ckpt):
                print(format_result(result))
        if env.is_main:
            for folder in dict.fromkeys(evaluator.results_folder(ckpt.run_dir) for ckpt in ckpts):
                print(f"results: {folder} (JSON under <model>/<set>_<split>/, TensorBoard in tb/)")
    finally:
        shutdown()


if __name__ == "__main__":
    main()
