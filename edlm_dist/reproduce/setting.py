"""A reproduction setting (`configs/reproduce/<setting>.toml`): the four training runs, the
likelihood evaluation and the sampling grid of one dataset, optionally shrunk by the smoke
overrides (`configs/reproduce/smoke.toml`)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNS = ("ar", "oracle", "mdlm", "nce")  # training order: the NCE energy needs the MDLM


class SettingError(ValueError):
    """A malformed setting file; printed as one line."""


@dataclass
class Setting:
    """What the driver runs and reports for one dataset."""

    name: str
    path: Path
    title: str
    unit: str  # "bpc" (bits per token) or "ppl" (perplexity per token)
    token: str  # what one token is, for the report ("character", "word", "GPT-2 token")
    runs: dict[str, Path]  # role (ar, oracle, mdlm, nce) -> its training config; the run folder is named by the role
    oracle: str  # "" = the `oracle` run; else an `hf:` oracle for GPT-2 settings
    train_overrides: list[str]
    eval: dict[str, Any]
    sample: dict[str, Any]

    @property
    def eval_set(self) -> str:
        return str(self.eval["datasets"])


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingError(f"setting file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise SettingError(f"{path}: {err}") from None


def _need(table: dict[str, Any], key: str, path: Path) -> Any:
    if key not in table:
        raise SettingError(f"{path}: missing key {key!r}")
    return table[key]


def load_setting(path: Path, repo: Path, smoke: Path | None = None) -> Setting:
    """The setting in `path` (relative run-config paths resolve against `repo`), with the smoke
    overrides of `smoke` merged in when given."""
    raw = _read(path)
    runs_table = _need(raw, "runs", path)
    oracle = str(raw.get("oracle", ""))
    wanted = [r for r in RUNS if not (r == "oracle" and oracle)]
    missing = [r for r in wanted if r not in runs_table]
    if missing:
        raise SettingError(f"{path}: [runs] has no {missing[0]!r} config")
    unit = _need(raw, "unit", path)
    if unit not in ("bpc", "ppl"):
        raise SettingError(f"{path}: unit must be 'bpc' or 'ppl', got {unit!r}")
    evaluation, sampling, overrides = dict(_need(raw, "eval", path)), dict(_need(raw, "sample", path)), []
    if smoke is not None:
        small = _read(smoke)
        overrides = list(small.get("train", {}).get("overrides", []))
        evaluation.update(small.get("eval", {}))
        sampling.update(small.get("sample", {}))
    for key in ("steps", "energies", "candidates", "windows", "seeds", "num_samples"):
        _need(sampling, key, path)
    _need(evaluation, "datasets", path)
    return Setting(
        name=path.stem, path=path, title=str(_need(raw, "title", path)), unit=unit,
        token=str(raw.get("token", "token")),
        runs={r: repo / runs_table[r] for r in wanted}, oracle=oracle, train_overrides=overrides,
        eval=evaluation, sample=sampling,
    )
