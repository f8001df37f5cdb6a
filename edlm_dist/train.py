"""Train a model: `python -m edlm_dist.train --config configs/tiny.toml [--section.key=value ...]`.

Tasks: `mdlm` (masked diffusion), `ar` (autoregressive baseline), `nce` (the EDLM energy,
fine-tuned from an MDLM run). Started again in the same run folder, it continues from the
latest checkpoint; keys that the checkpoints fix (the model's shape, the data, the task) cannot
change then, the others take effect (the replaced config is kept as config.<step>.toml).

`--check` prints the memory plan per rank on stderr (at torchrun's WORLD_SIZE, default 1, on this
machine's device; refused in one line when it cannot fit) and the run folder on stdout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edlm_dist.config import TrainProgram, config_to_toml, exit_on_user_error, parse_cli
from edlm_dist.distributed import resolve_device, shutdown
from edlm_dist.runs import CheckpointManager, RunFolder
from edlm_dist.training import Trainer
from edlm_dist.runs.checkpoint import checkpoint_folder
from edlm_dist.energy.loading import resolve_model_config
from edlm_dist.training.preflight import check_command
from edlm_dist.runs.memory_check import check_training_memory

CHECK = "--check"


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_cli(TrainProgram, argv, description=__doc__, switches={
        CHECK: "check the command against its run folder (not in use, keys fixed on resume, steps, writable storage) "
               "and its memory plan against this machine's device at WORLD_SIZE ranks (default 1), print the plan "
               "(stderr) and the run folder (stdout) and exit without training (launchers run it before a job)"})
    cfg = resolve_model_config(args.config)  # an NCE run's [model] is its denoiser's: final before anything is built
    if args.print_config:
        print(config_to_toml(cfg), end="")
        return
    if CHECK in args.switches:
        device = resolve_device(cfg.runtime.device, int(os.environ.get("LOCAL_RANK", "0")))
        plan, fits = check_training_memory(cfg, int(os.environ.get("WORLD_SIZE", "1")), device)
        run_folder = RunFolder(Path(cfg.job.dump_folder, cfg.job.name).resolve())
        run_folder.lock.check_free()
        check_command(cfg, run_folder, CheckpointManager(checkpoint_folder(run_folder.path, cfg.checkpoint.folder),
                                                         cfg.checkpoint.keep_last))
        print(f"{plan.table()}\n{fits}", file=sys.stderr)
        print(run_folder.path)
        return
    try:
        Trainer(cfg).run()
    finally:
        shutdown()


if __name__ == "__main__":
    main()
