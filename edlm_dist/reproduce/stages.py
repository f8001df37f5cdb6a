"""The stages of one setting (train, evaluate, sample, score), each a project entry point with
its exact arguments, skipped when its output exists, timed into `<runs>/<setting>/timings.json`.
The driver sets each training run's folder (`job.dump_folder`, `job.name` = the run's role), the
NCE run's denoiser and the output folders of evaluation (`eval.output`) and sampling (`--out`);
everything else comes from the configs."""

from __future__ import annotations

import importlib
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from edlm_dist.data.eval_sets import parse_eval_sets
from edlm_dist.fileio import atomic_write_text
from edlm_dist.reproduce.setting import RUNS, Setting

EVAL_MODELS = ("ar", "mdlm", "edlm_nce", "edlm_ar", "edlm_coar")  # the rows of Table 1
EVAL_RUNS = {"ar": "ar", "mdlm": "mdlm", "edlm_nce": "nce", "edlm_ar": "mdlm", "edlm_coar": "mdlm"}  # the run scored
GRID_KEYS = ("seeds", "steps", "energies", "candidates", "windows")


@dataclass
class Stage:
    """One step of the pipeline: `module.main(argv)` (or `action()`), done once `done()` holds."""

    name: str  # "<kind> <what>", kind one of train, eval, sample, score
    done: Callable[[], bool]
    module: str = ""
    argv: list[str] = field(default_factory=list)
    action: Callable[[], None] | None = None

    def command(self, repo: Path) -> str:
        """The shell command that runs this stage by hand (paths relative to `repo` where possible)."""
        if not self.module:
            return ""
        return "python -m " + self.module + " " + shlex.join(_relative(a, repo) for a in self.argv)

    def run(self) -> None:
        if self.action is not None:
            self.action()
        else:
            importlib.import_module(self.module).main(self.argv)


def _relative(arg: str, repo: Path) -> str:
    return arg.replace(str(repo.resolve()) + "/", "")


def likelihood_folder(root: Path, setting: Setting, label: str) -> Path:
    """Where the evaluation of the Table 1 model `label` writes its JSON: `eval.output` is
    <root>/likelihood, so the results folder of a run is <root>/likelihood/<run>."""
    return root / "likelihood" / EVAL_RUNS[label] / label / parse_eval_sets(setting.eval_set)[0].folder


def sample_name(energy: str, k: int, window: float, steps: int, seed: int) -> str:
    """The output folder name (under <root>/samples) of one point of the sampling grid (`mdlm` for k = 1)."""
    what = "mdlm" if energy == "mdlm" else f"{energy}_k{k}_w{window:g}"
    return f"{what}_T{steps}_s{seed}"


def sampler_configs(setting: Setting) -> list[tuple[str, int, float]]:
    """(energy, k, window) of every sampler: MDLM (energy "mdlm", k = 1), then the EDLM grid."""
    s = setting.sample
    return [("mdlm", 1, 0.0)] + [(e, k, w) for e in s["energies"] for k in s["candidates"] for w in s["windows"]]


def sample_points(setting: Setting) -> list[tuple[str, int, float, int, int]]:
    """(energy, k, window, steps, seed) of every sampling run: each sampler at each step count and seed."""
    s = setting.sample
    return [(e, k, w, steps, seed)
            for seed in s["seeds"] for steps in s["steps"] for e, k, w in sampler_configs(setting)]


def _overrides(section: str, table: dict[str, object], skip: tuple[str, ...] = ()) -> list[str]:
    """`--section.key=value` for the keys of a setting's table (TOML spelling of booleans)."""
    return [f"--{section}.{k}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in table.items() if k not in skip]


def plan(setting: Setting, root: Path, repo: Path, score: Callable[[], None], score_done: Callable[[], bool],
         progress: bool = True) -> list[Stage]:
    """Every stage of `setting` with its runs under `root` (= <runs>/<setting>); `progress` False
    turns off the entry points' own progress bars."""
    run = {r: root / r for r in RUNS}
    quiet = [] if progress else ["--metrics.progress=false"]
    stages = []
    for r, config in setting.runs.items():
        argv = ["--config", str(config), f"--job.dump_folder={root}", f"--job.name={r}",
                *setting.train_overrides, *quiet]
        if r == "nce":
            argv.append(f"--nce.denoiser={run['mdlm']}")
        stages.append(Stage(f"train {r}", (run[r] / "finished").is_file, "edlm_dist.train", argv))
    base_eval = ["--config", str(repo / "configs/reproduce/eval.toml"), f"--eval.output={root / 'likelihood'}",
                 *_overrides("eval", setting.eval), *quiet]
    energies = {"edlm_ar": ["--energy.kind=ar", f"--energy.checkpoint={run['ar']}"],
                "edlm_coar": ["--energy.kind=coar", f"--energy.checkpoint={run['ar']}"]}
    for label in EVAL_MODELS:
        folder = likelihood_folder(root, setting, label)
        stages.append(Stage(f"eval {label}", lambda f=folder: any(f.glob("step_*.json")), "edlm_dist.eval",
                            [*base_eval, "--checkpoint", str(run[EVAL_RUNS[label]]), *energies.get(label, [])]))
    oracle = setting.oracle or str(run["oracle"])
    base_sample = ["--config", str(repo / "configs/reproduce/sample.toml"), "--checkpoint", str(run["mdlm"]),
                   f"--sample.oracle={oracle}",
                   *_overrides("sample", setting.sample, GRID_KEYS), *quiet]
    for energy, k, window, steps, seed in sample_points(setting):
        name = sample_name(energy, k, window, steps, seed)
        argv = [*base_sample, "--out", str(root / "samples" / name), f"--job.seed={seed}", f"--sample.steps={steps}",
                f"--sample.num_candidates={k}"]
        if energy != "mdlm":
            energy_run = run["nce"] if energy == "nce" else run["ar"]
            argv += [f"--sample.window={window}", f"--energy.kind={energy}", f"--energy.checkpoint={energy_run}"]
        summary = root / "samples" / name / "summary.json"
        stages.append(Stage(f"sample {name}", summary.is_file, "edlm_dist.sample", argv))
    stages.append(Stage("score samples", score_done, action=score))
    return stages


class Timings:
    """Wall seconds per stage, kept in `<root>/timings.json` (a skipped stage keeps its old time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def record(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = seconds
        atomic_write_text(self.path, json.dumps(self.seconds, indent=2) + "\n")


def run_stages(stages: list[Stage], timings: Timings, label: str, progress: bool = True) -> None:
    """Run every stage whose output is missing, in order, timing each, under a progress bar."""
    bar = tqdm(stages, desc=label, unit="stage", disable=not progress, dynamic_ncols=True)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        if stage.done():
            continue
        start = time.perf_counter()
        stage.run()
        if not stage.done():
            raise RuntimeError(f"stage {stage.name!r} finished without writing its output")
        timings.record(stage.name, time.perf_counter() - start)
