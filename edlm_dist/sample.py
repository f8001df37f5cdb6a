"""Sample an MDLM, or EDLM with an energy: `python -m edlm_dist.sample --config configs/sample/edlm_ar.toml
--checkpoint runs/owt_mdlm [--section.key=value ...]`, under torchrun for several ranks.

`--checkpoint PATH` names the MDLM run (or a step_<8-digit step> folder) and stands for
`--energy.denoiser=PATH`. Writes samples.jsonl and summary.json (cost, ESS, Gen PPL, entropy)
to the run folder <job.dump_folder>/<job.name>.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edlm_dist.config import ConfigError, config_to_toml, exit_on_user_error, parse_cli
from edlm_dist.distributed import shutdown
from edlm_dist.evaluation import Sampler


def _checkpoint_as_override(args: list[str]) -> list[str]:
    """Rewrite `--checkpoint PATH` / `--checkpoint=PATH` as `--energy.denoiser=PATH`."""
    out, i = [], 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name != "--checkpoint":
            out.append(args[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError("--checkpoint needs a value: the MDLM run folder or one of its step folders")
            value, i = args[i + 1], i + 1
        out.append(f"--energy.denoiser={value}")
        i += 1
    return out


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_cli(_checkpoint_as_override(list(sys.argv[1:] if argv is None else argv)), description=__doc__)
    if args.print_config:
        print(config_to_toml(args.config), end="")
        return
    try:
        Sampler(args.config).run()
    finally:
        shutdown()


if __name__ == "__main__":
    main()
