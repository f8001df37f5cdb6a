"""Sample an MDLM, or EDLM with an energy: `python -m edlm_dist.sample --config configs/sample/coar.toml
--checkpoint runs/owt_mdlm [--out FOLDER] [--overwrite] [--section.key=value ...]`, under torchrun for
several ranks.

`--checkpoint PATH`, as in `edlm_dist.eval`, names the run whose model is read: here the MDLM
run (or a step_<8-digit step> folder) sampled from, `sample.checkpoint` (as `eval.checkpoint` is
the runs scored). Writes samples.jsonl,
summary.json (cost, ESS, Gen PPL, entropy), the resolved config.toml and TensorBoard (tb/) to the
output folder: `--out FOLDER` (sample.output), else
<denoiser run>/samples/<sampler>_T<steps>_seed<seed>_step<denoiser step>, e.g.
runs/tiny/samples/edlm-ar_k4_w0.5_T8_seed0_step00000004. A training run folder and an evaluation
results folder are refused, and earlier results there are replaced only with --overwrite.
"""

from __future__ import annotations

from collections.abc import Sequence

from edlm_dist.config import SampleProgram, config_to_toml, exit_on_user_error, parse_cli
from edlm_dist.distributed import shutdown
from edlm_dist.evaluation import Sampler

OVERWRITE = "--overwrite"


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_cli(SampleProgram, argv, description=__doc__, aliases={
        "--checkpoint": ("sample.checkpoint", "the run whose model is read: the MDLM sampled from"),
        "--out": ("sample.output", "the output folder")},
        switches={OVERWRITE: "replace the samples and summary of an earlier run in the output folder"})
    if args.print_config:
        print(config_to_toml(args.config), end="")
        return
    try:
        Sampler(args.config, overwrite=OVERWRITE in args.switches).run()
    finally:
        shutdown()


if __name__ == "__main__":
    main()
