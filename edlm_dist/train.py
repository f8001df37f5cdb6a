"""Train a model: `python -m edlm_dist.train --config configs/tiny.toml [--section.key=value ...]`.

Tasks: `mdlm` (masked diffusion), `ar` (autoregressive baseline), `nce` (the EDLM energy,
fine-tuned from an MDLM run). Started again in the same run folder, it continues from the
latest checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from edlm_dist.config import config_to_toml, exit_on_user_error, parse_cli
from edlm_dist.distributed import shutdown
from edlm_dist.training import Trainer


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_cli(argv, description=__doc__)
    if args.print_config:
        print(config_to_toml(args.config), end="")
        return
    try:
        Trainer(args.config).run()
    finally:
        shutdown()


if __name__ == "__main__":
    main()
