"""How far 2-rank FSDP and a resharded resume drift from one process, step by step (CPU, gloo).

The debug config trained for `--steps` steps in one process, and on 2 ranks for the first half,
whose checkpoint then resumes on 1 rank for the second half. Prints the relative loss difference
to the one-process run at every step, and the largest in each half: the rounding differences of
reductions in another order grow as training goes on (docs/training.md).

usage: python tools/bench_parity.py [--steps 40] [--out FILE [--overwrite]]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' launcher of gloo ranks

from distributed_utils import run_distributed  # noqa: E402
from edlm_dist.config import TrainProgram, exit_on_user_error, load_config  # noqa: E402
from edlm_dist.fileio import atomic_write_text, refuse_existing  # noqa: E402
from edlm_dist.training import Trainer  # noqa: E402


def losses(folder: Path, steps: int, total: int, resume_from: Path | None, out: Path) -> None:
    """Train `steps` steps of the debug config (resuming `resume_from` first), checkpoint, and write
    the losses to `out` (rank 0)."""
    cfg = load_config(TrainProgram, ROOT / "configs" / "debug.toml",
                      [f"--job.dump_folder={folder}", f"--training.steps={total}", "--metrics.tensorboard=false"])
    trainer = Trainer(cfg)
    if resume_from is not None:
        shutil.copytree(resume_from, trainer.run_folder.path / "checkpoints")
        assert trainer.resume()
    values = [trainer.train_step()["train/loss"] for _ in range(steps)]
    trainer.save_checkpoint()
    if trainer.env.rank == 0:
        out.write_text(json.dumps(values))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="steps of the whole run (even)")
    parser.add_argument("--out", help="also write the JSON result to this file (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    refuse_existing([args.out] if args.out else [], args.overwrite)
    half = args.steps // 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        losses(root / "one", args.steps, args.steps, None, root / "one.json")
        run_distributed(losses, 2, root / "two", half, args.steps, None, root / "two.json")
        losses(root / "resumed", args.steps - half, args.steps, root / "two" / "debug" / "checkpoints",
               root / "resumed.json")
        one, two, resumed = (json.loads((root / f"{name}.json").read_text()) for name in ("one", "two", "resumed"))
    relative = [abs(a - b) / abs(b) for a, b in zip(two + resumed, one)]
    result = {"steps": args.steps, "torch": torch.__version__, "relative_difference": [f"{r:.1e}" for r in relative],
              "max_2_ranks_first_half": max(relative[:half]), "max_resumed_on_1_rank_second_half": max(relative[half:])}
    print(json.dumps(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
