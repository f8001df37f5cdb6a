"""Run the test suite on several torch releases, each in a venv of its own.

    python tools/compat_check.py 2.11.0 2.13.0 2.15.0 [--venvs DIR] [--table docs/compatibility.md]
    python tools/compat_check.py --table docs/compatibility.md     # the table from the records alone

For each version: a venv `<venvs>/torch-<version>` (made once, then reused while its torch is
that version) with that torch and the project (editable, with its dev extra), and the whole
suite run in it as CI runs it (`.ci/run`'s environment: the shared data and, where installed,
SLURM required). Prints one line per version (passed / failed / skipped and the time) and keeps a
record per version in `<venvs>/results.json`; `--table` rewrites the docs table from every
version recorded there. Not part of CI, which stays on the local 2.13 wheel: run it by hand
before a release and whenever torch-facing code changes (docs/compatibility.md).

The machine's pip configuration may cap torch (a constraint file); the install of torch itself
runs with an empty constraint, that one command only. A CUDA wheel runs on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENVS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edlm_dist" / "compat"
VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")
COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_torch(venv: Path) -> str | None:
    """The torch version in `venv` (without a local suffix such as +cpu), or None."""
    if not venv_python(venv).exists():
        return None
    probe = subprocess.run([str(venv_python(venv)), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    return probe.stdout.strip().split("+")[0] if probe.returncode == 0 else None


def prepare(version: str, venvs: Path, log) -> Path:
    """The venv of `version`, made (or remade, if it holds another torch) with the project installed."""
    venv = venvs / f"torch-{version}"
    if installed_torch(venv) != version:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=log, stderr=log)
        uncapped = {**os.environ, "PIP_CONSTRAINT": os.devnull}
        subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "-q", f"torch=={version}"],
                       check=True, stdout=log, stderr=log, env=uncapped)
    subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"],
                   check=True, stdout=log, stderr=log)
    return venv


def suite_environment() -> dict[str, str]:
    """The environment `.ci/run` gives the suite: shared data required, SLURM required where installed."""
    env = {**os.environ, "EDLM_REQUIRE_DATA": "1"}
    env.setdefault("EDLM_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin"
    if shutil.which("slurmctld", path=env["PATH"]) and shutil.which("munged", path=env["PATH"]):
        env["EDLM_REQUIRE_SLURM"] = "1"
    return env


def summarise(output: str) -> dict[str, int]:
    """pytest's final counts (passed, failed, skipped, errors) from its last summary line."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for number, kind in COUNT.findall(lines[-1] if lines else ""):
        key = "errors" if kind.startswith("error") else kind
        if key in counts:
            counts[key] += int(number)
    return counts


def check(version: str, venvs: Path, pytest_args: list[str]) -> dict:
    """Set up the venv of `version` and run the suite there; its record."""
    log_path = venvs / f"torch-{version}.log"
    with open(log_path, "w") as log:
        venv = prepare(version, venvs, log)
        start = time.monotonic()
        run = subprocess.run([str(venv_python(venv)), "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
                             cwd=ROOT, env=suite_environment(), capture_output=True, text=True)
        minutes = (time.monotonic() - start) / 60
        log.write(run.stdout + run.stderr)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    counts = summarise(run.stdout)
    return {"torch": installed_torch(venv), "python": ".".join(map(str, sys.version_info[:3])),
            "date": datetime.date.today().isoformat(), "commit": commit.stdout.strip() + ("+changes" if dirty else ""),
            "exit_code": run.returncode, "minutes": round(minutes, 1), "log": str(log_path), **counts}


def verdict(record: dict) -> str:
    return "pass" if record["exit_code"] == 0 and record["failed"] == record["errors"] == 0 else "FAIL"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_table(path: Path, records: dict[str, dict]) -> None:
    """Replace the table between the markers in `path` with one row per recorded version."""
    text = path.read_text()
    begin, end = "<!-- compat-table -->", "<!-- /compat-table -->"
    if begin not in text or end not in text:
        fail(f"{path} has no {begin} ... {end} markers to put the table between")
    rows = ["| torch | result | passed | failed | skipped | minutes | date | commit |",
            "|---|---|---|---|---|---|---|---|"]
    for version in sorted(records, key=lambda v: tuple(int(x) for x in v.split("."))):
        r = records[version]
        rows.append(f"| {version} | {verdict(r)} | {r['passed']} | {r['failed'] + r['errors']} | {r['skipped']} | "
                    f"{r['minutes']} | {r['date']} | {r['commit']} |")
    head, rest = text.split(begin, 1)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(head + begin + "\n" + "\n".join(rows) + "\n" + end + rest.split(end, 1)[1])
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", help="torch releases, e.g. 2.11.0 2.13.0 2.15.0")
    parser.add_argument("--venvs", type=Path, default=DEFAULT_VENVS, help=f"where the venvs live ({DEFAULT_VENVS})")
    parser.add_argument("--table", type=Path, help="a docs page whose compat table to rewrite from the records")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-x -k checkpoint'")
    args = parser.parse_args()
    for version in args.versions:
        if not VERSION.match(version):
            fail(f"torch version {version!r} is not a release number like 2.13.0")
    if args.table is not None and not args.table.is_file():
        fail(f"--table {args.table}: no such file")
    if not args.versions and args.table is None:
        fail("name the torch versions to check, or --table to write the table from the records")
    args.venvs.mkdir(parents=True, exist_ok=True)
    results_path = args.venvs / "results.json"
    try:
        records = json.loads(results_path.read_text()) if results_path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        fail(f"{results_path} is damaged ({err}): move it aside and run the check again")
    if not records and not args.versions:
        fail(f"no records in {results_path}: run the check first")
    failed = False
    for version in args.versions:
        try:
            record = check(version, args.venvs, args.pytest_args.split())
        except subprocess.CalledProcessError as err:
            fail(f"torch {version}: setting up its venv failed ({' '.join(map(str, err.cmd))}): see "
                 f"{args.venvs / f'torch-{version}.log'}")
        if not args.pytest_args:  # only whole-suite runs go into the record
            records[version] = record
            write_json(results_path, records)
        failed |= verdict(record) != "pass"
        print(f"torch {version}: {verdict(record)} - {record['passed']} passed, {record['failed'] + record['errors']} "
              f"failed, {record['skipped']} skipped in {record['minutes']} min (log: {record['log']})", flush=True)
    if args.table is not None:
        write_table(args.table, records)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
