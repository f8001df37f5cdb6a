"""Sampling and evaluation never damage a training run: their outputs go to their own folders,
earlier results are replaced only with --overwrite, and a folder that is a training run or cannot
be written is refused in one line before any work. The commands are the README's, run from a
folder whose `runs/debug` is the training run that `--config configs/debug.toml` names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edlm_dist.config import SampleProgram, TrainProgram, load_config
from edlm_dist.data import build_dataset
from edlm_dist.data.eval_sets import FixedBlocks, load_eval_set, parse_eval_sets
from edlm_dist.eval import main as evaluate
from edlm_dist.evaluation import LikelihoodEvaluator, Sampler
from edlm_dist.evaluation.sampler import sample_name
from edlm_dist.sample import main as sample
from run_utils import DEBUG_CONFIG, DEBUG_EVAL, DEBUG_SAMPLE, debug_config, folder_digest, one_line_error, read_scalars

STEP = 3  # the tiny runs' last checkpoint
SAMPLE = ["--config", str(DEBUG_SAMPLE), "--checkpoint", "runs/tiny", "--sample.num_candidates=1",
          "--sample.num_samples=2"]
EVAL = ["--config", str(DEBUG_EVAL), "--checkpoint", "runs/tiny", "--eval.datasets=val", "--eval.batch_size=16"]
SAMPLES = Path("runs/tiny/samples") / f"mdlm_T8_seed0_step{STEP:08d}"  # the debug config samples 8 steps
RESULT = Path("runs/tiny/eval/mdlm/val_val") / f"step_{STEP:08d}.json"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder with two trained runs: runs/debug (where configs/debug.toml points) and runs/tiny."""
    from edlm_dist.training import Trainer

    folder = tmp_path_factory.mktemp("outputs")
    for name in ("debug", "tiny"):
        Trainer(debug_config(folder / "runs", f"--job.name={name}", f"--training.steps={STEP}")).run()
    return folder


@pytest.fixture
def here(root, monkeypatch) -> Path:
    """The working folder of the commands: `root`."""
    monkeypatch.chdir(root)
    return root


def training_files(root: Path) -> dict[str, dict[str, str]]:
    """Every file of both training runs, except the folders that sampling and evaluation own."""
    return {run: {name: digest for name, digest in folder_digest(root / "runs" / run).items()
                  if not name.startswith(("samples/", "eval/"))} for run in ("debug", "tiny")}


@pytest.fixture
def no_work(monkeypatch):
    """Sampling or scoring anything fails the test: the commands must stop before."""
    def fail(*args, **kwargs):
        raise AssertionError("the command did work it should have refused")

    monkeypatch.setattr(Sampler, "generate", fail)
    monkeypatch.setattr(LikelihoodEvaluator, "evaluate_checkpoint", fail)


# ---- sampling --------------------------------------------------------------------------------

def test_sample_names_follow_the_settings():
    cfg = load_config(SampleProgram, DEBUG_SAMPLE, ["--sample.num_candidates=1", "--sample.steps=64"])
    assert sample_name(cfg, 6) == "mdlm_T64_seed0_step00000006"
    cfg = load_config(SampleProgram, DEBUG_SAMPLE, ["--energy.kind=ar", "--sample.num_candidates=4", "--sample.window=0.5"])
    assert sample_name(cfg, 4) == "edlm-ar_k4_w0.5_T8_seed0_step00000004"


def test_sampling_writes_its_own_folder_and_replaces_it_only_with_overwrite(here, capsys, monkeypatch):
    before = training_files(here)
    sample(SAMPLE)
    assert training_files(here) == before
    assert f"outputs: {SAMPLES}" in capsys.readouterr().out
    assert len((SAMPLES / "samples.jsonl").read_text().splitlines()) == 2
    assert json.loads((SAMPLES / "summary.json").read_text())["num_samples"] == 2
    assert load_config(SampleProgram, SAMPLES / "config.toml").sample.output == str(SAMPLES)
    assert len(list((SAMPLES / "tb").glob("events.out.tfevents.*"))) == 1

    outputs = folder_digest(SAMPLES)
    with monkeypatch.context() as patch:
        patch.setattr(Sampler, "generate", lambda self: pytest.fail("sampled before refusing"))
        err = one_line_error(capsys, sample, SAMPLE)
    assert f"{SAMPLES / 'samples.jsonl'} already exists" in err and "--overwrite" in err
    assert folder_digest(SAMPLES) == outputs and training_files(here) == before

    sample([*SAMPLE, "--sample.num_samples=3", "--overwrite"])
    assert len((SAMPLES / "samples.jsonl").read_text().splitlines()) == 3
    assert json.loads((SAMPLES / "summary.json").read_text())["num_samples"] == 3
    assert len(list((SAMPLES / "tb").glob("events.out.tfevents.*"))) == 1  # the old events are gone
    assert training_files(here) == before


def test_sampling_into_a_training_run_is_refused(here, capsys, no_work):
    before = folder_digest(here / "runs" / "debug")
    err = one_line_error(capsys, sample, [*SAMPLE, "--out", "runs/debug"])
    assert "runs/debug is a training run folder" in err
    assert folder_digest(here / "runs" / "debug") == before


def test_an_unwritable_output_folder_fails_before_sampling(here, capsys, no_work):
    (here / "a_file").write_text("not a folder\n")
    err = one_line_error(capsys, sample, [*SAMPLE, "--out", "a_file/samples"])
    assert "cannot write to the output folder a_file/samples" in err and "Not a directory" in err


# ---- evaluation ------------------------------------------------------------------------------

def test_evaluation_writes_under_the_run_eval_folder_and_replaces_only_with_overwrite(here, capsys, monkeypatch):
    before = training_files(here)
    evaluate([*EVAL, "--eval.num_sequences=32"])  # more than the 2 x 8 validation blocks of training
    assert training_files(here) == before
    result = json.loads(RESULT.read_text())
    assert result["sequences"] == 32 and result["sequences_requested"] == 32
    assert [step for step, _ in read_scalars(here / "runs/tiny/eval")["eval/val_val/mdlm/nelbo"]] == [STEP]
    assert "results: runs/tiny/eval" in capsys.readouterr().out

    outputs = folder_digest(here / "runs/tiny/eval")
    with monkeypatch.context() as patch:
        patch.setattr(LikelihoodEvaluator, "evaluate_checkpoint", lambda self, ckpt: pytest.fail("scored first"))
        err = one_line_error(capsys, evaluate, [*EVAL, "--eval.num_sequences=32"])
    assert f"{RESULT} already exists" in err and "--overwrite" in err
    assert folder_digest(here / "runs/tiny/eval") == outputs and training_files(here) == before

    evaluate([*EVAL, "--eval.num_sequences=8", "--overwrite"])
    assert json.loads(RESULT.read_text())["sequences"] == 8
    assert training_files(here) == before


def test_the_service_refuses_overwrite(here, capsys, no_work):
    err = one_line_error(capsys, evaluate, ["--config", str(DEBUG_EVAL), "--watch", "runs/tiny", "--overwrite"])
    assert "--overwrite does not go with --watch" in err


@pytest.mark.parametrize("out,message", [
    ("runs", "the results folder runs/tiny is a training run folder"),  # <out>/<run name> = the run itself
    ("runs/debug", "eval.output (--out) runs/debug is a training run folder"),
    ("a_file", "cannot write to the results folder a_file/tiny: [Errno 20] Not a directory"),
])
def test_evaluation_refuses_bad_output_folders_before_scoring(here, capsys, no_work, out, message):
    (here / "a_file").write_text("not a folder\n")
    before = training_files(here)
    assert message in one_line_error(capsys, evaluate, [*EVAL, "--out", out])
    assert training_files(here) == before


def test_several_runs_share_an_output_folder_by_run_name(here, tmp_path):
    evaluate(["--config", str(DEBUG_EVAL), "--checkpoint", "runs/tiny,runs/debug", "--eval.num_sequences=4",
          "--out", str(tmp_path)])
    for run in ("tiny", "debug"):
        assert json.loads((tmp_path / run / "mdlm/val_val" / f"step_{STEP:08d}.json").read_text())["sequences"] == 4
        assert (tmp_path / run / "tb").is_dir()


def test_a_finite_set_is_scored_whole_and_says_so(here, capsys, monkeypatch, tmp_path):
    real = LikelihoodEvaluator.eval_set
    monkeypatch.setattr(LikelihoodEvaluator, "eval_set",
                        lambda self, run, spec: FixedBlocks(spec.label, real(self, run, spec).blocks(0, 5)))
    evaluate([*EVAL, "--eval.num_sequences=32", "--out", str(tmp_path)])
    assert "mdlm on val:val: the set has 5 sequences, fewer than eval.num_sequences = 32; scoring all 5" in (
        capsys.readouterr().out)
    result = json.loads((tmp_path / "tiny/mdlm/val_val" / f"step_{STEP:08d}.json").read_text())
    assert result["sequences"] == 5 and result["sequences_requested"] == 32


def test_more_synthetic_validation_blocks_keep_the_first_ones():
    run = load_config(TrainProgram, DEBUG_CONFIG)
    tokenizer = build_dataset(run.data).tokenizer
    spec = parse_eval_sets("val")[0]
    usual, more = load_eval_set(spec, tokenizer, run), load_eval_set(spec, tokenizer, run, sequences=40)
    assert (len(usual), len(more)) == (16, 40)
    assert (more.blocks(0, 16) == usual.blocks(0, 16)).all()


# ---- one program's outputs against the other's -------------------------------------------------

def test_sampling_and_evaluation_refuse_each_others_folders(here, capsys, monkeypatch, tmp_path):
    evaluate([*EVAL[:3], "runs/debug", *EVAL[4:], "--eval.num_sequences=4", "--overwrite"])  # into runs/debug/eval
    sample([*SAMPLE, "--out", str(tmp_path / "shared" / "tiny")])
    monkeypatch.setattr(Sampler, "generate", lambda self: pytest.fail("sampled before refusing"))
    monkeypatch.setattr(LikelihoodEvaluator, "evaluate_checkpoint", lambda self, ckpt: pytest.fail("scored first"))
    before = folder_digest(here / "runs" / "debug"), folder_digest(tmp_path)

    err = one_line_error(capsys, sample, [*SAMPLE, "--out", "runs/debug/eval", "--overwrite"])
    assert err.endswith(f"the output folder runs/debug/eval is an evaluation results folder (it holds "
                        f"runs/debug/eval/mdlm/val_val/step_{STEP:08d}.json) and sampling never writes into another "
                        f"program's outputs: choose another folder with --out")
    err = one_line_error(capsys, evaluate, [*EVAL, "--out", str(tmp_path / "shared"), "--overwrite"])
    assert (f"the results folder {tmp_path}/shared/tiny is a sampling output folder (it holds "
            f"{tmp_path}/shared/tiny/samples.jsonl) and evaluation never writes") in err
    err = one_line_error(capsys, evaluate, [*EVAL, "--out", str(tmp_path / "shared" / "tiny")])
    assert f"eval.output (--out) {tmp_path}/shared/tiny is a sampling output folder" in err
    assert (folder_digest(here / "runs" / "debug"), folder_digest(tmp_path)) == before

    events = tmp_path / "logs" / "tb" / "events.out.tfevents.1.host"  # TensorBoard events of someone else
    events.parent.mkdir(parents=True)
    events.write_bytes(b"events")
    err = one_line_error(capsys, sample, [*SAMPLE, "--out", str(tmp_path / "logs")])
    assert f"{events} already exists: give --overwrite" in err and events.read_bytes() == b"events"


def test_overwrite_clears_what_interrupted_writes_left_and_nothing_else(here, tmp_path):
    out = tmp_path / "samples"
    sample([*SAMPLE, "--out", str(out)])
    stale = [out / ".samples.jsonl.k1ll3d.tmp", out / ".config.toml.k1ll3d.tmp"]
    kept = [out / "notes.txt", out / ".other.json.k1ll3d.tmp"]
    for path in stale + kept:
        path.write_text("left behind\n")
    sample([*SAMPLE, "--out", str(out), "--overwrite"])
    assert [path.exists() for path in stale + kept] == [False, False, True, True]

    results = tmp_path / "evals"
    evaluate([*EVAL, "--eval.num_sequences=4", "--out", str(results)])
    result = results / "tiny" / "mdlm" / "val_val" / f"step_{STEP:08d}.json"
    stale = result.parent / f".{result.name}.k1ll3d.tmp"
    record = result.with_suffix(".damaged")  # a service found the checkpoint damaged once
    for path in (stale, record):
        path.write_text("left behind\n")
    evaluate([*EVAL, "--eval.num_sequences=4", "--out", str(results), "--overwrite"])
    assert json.loads(result.read_text())["sequences"] == 4
    assert not stale.exists() and not record.exists()


def test_a_record_of_a_damaged_checkpoint_needs_overwrite(here, capsys, no_work, tmp_path):
    record = tmp_path / "tiny" / "mdlm" / "val_val" / f"step_{STEP:08d}.damaged"
    record.parent.mkdir(parents=True)
    record.write_text("{}\n")
    err = one_line_error(capsys, evaluate, [*EVAL, "--out", str(tmp_path)])
    assert f"{record} already exists: give --overwrite" in err
