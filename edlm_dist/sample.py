"""Sample an MDLM, or EDLM with an energy: `python -m edlm_dist.sample --config configs/sample/edlm_ar.toml
--checkpoint runs/owt_mdlm [--section.key=value ...]`, under torchrun for several ranks.

`--checkpoint PATH` names the MDLM run (or a step_<8-digit step> folder) and stands for
`--energy.denoiser=PATH`. Writes samples.jsonl and summary.json (cost, ESS, Gen PPL, entropy)
to the run folder <job.dump_folder>/<job.name>.
"""

from __future__ import annotations

from collections.abc import Sequence

from edlm_dist.config import config_to_toml, exit_on_user_error, parse_cli
from edlm_dist.distributed import shutdown
from edlm_dist.evaluation import Sampler


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_cli(argv, description=__doc__, aliases={"--checkpoint": "energy.denoiser"})
    if args.print_config:
        print(config_to_toml(args.config), end="")
        return
    try:
        Sampler(args.config).run()
    finally:
        shutdown()


if __name__ == "__main__":
    main()
