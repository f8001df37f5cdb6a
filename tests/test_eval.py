"""Likelihood evaluation (`python -m edlm_dist.eval`): the held-out sets and their conventions,
the figures of tiny GPT-2-tokenised MDLM / AR / EDLM-NCE runs at 1 and 2 ranks (torchrun), and
the service that follows a training run's checkpoints."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from edlm_dist.config import EvalProgram, TrainProgram, load_config
from edlm_dist.data import DataError, build_tokenizer
from edlm_dist.data.detokenizers import lambada_detokenize, ptb_detokenize, wikitext_detokenize
from edlm_dist.data.eval_sets import EvalSet, load_eval_set, parse_eval_sets
from edlm_dist.distributed import init_distributed
from edlm_dist.eval import main
from edlm_dist.evaluation import EvalService, LikelihoodEvaluator
from edlm_dist.diffusion.likelihood import CONSISTENT, ESS_FLOOR, GUARANTEED, PAPER
from edlm_dist.evaluation.perplexity import format_result, judge, summarize, tensorboard_scalars
from run_utils import DEBUG_CONFIG, DEBUG_EVAL, debug_config, folder_digest, read_scalars, wait_for

SETS = "wikitext2:val, ptb:test"
EVAL_ARGS = ["--eval.num_sequences=6", "--eval.batch_size=4", "--eval.num_proposals=2", "--job.seed=3"]


# ---- the sets ---------------------------------------------------------------------------------

def test_detokenizers_undo_each_corpus_tokenisation():
    assert wikitext_detokenize(" = = Early life = = \n") == " == Early life ==\n"
    assert wikitext_detokenize("a 1 @,@ 000 @-@ year ( long ) trip , it 's") == "a 1,000-year (long) trip, it's"
    assert ptb_detokenize("he does n't pay $ N a N N share \\/ <unk>") == "he doesn't pay $1 a 1 1 share / ?"
    assert lambada_detokenize("  \u201cHi,\u201d she said.  ") == '\n"Hi," she said.'


def test_set_names_and_splits_are_checked():
    specs = parse_eval_sets("wikitext2, ptb:test, lambada, files=/data/corpus, val")
    assert [s.label for s in specs] == ["wikitext2:val", "ptb:test", "lambada:test", "files:val", "val:val"]
    assert specs[3].path == "/data/corpus"
    with pytest.raises(DataError, match="unknown evaluation set 'wikitext3'"):
        parse_eval_sets("wikitext3")
    with pytest.raises(DataError, match="lambada has no split 'val'"):
        parse_eval_sets("lambada:val")


def test_blocks_wrap_documents_with_eos_and_drop_the_tail(data_dir):
    tokenizer = build_tokenizer("gpt2", str(data_dir / "gpt2_tokenizer"))
    run = load_config(TrainProgram, DEBUG_CONFIG, ["--data.tokenizer=gpt2", "--data.seq_len=64"])
    ptb = load_eval_set(parse_eval_sets("ptb:test")[0], tokenizer, run)
    assert ptb.documents == 3761  # one per sentence, each followed by EOS
    assert int((ptb.stream == tokenizer.eos_id).sum()) == 3761
    assert len(ptb) == len(ptb.stream) // 62
    blocks = ptb.blocks(2, 4)
    assert blocks.shape == (2, 64) and (blocks[:, [0, -1]] == tokenizer.eos_id).all()
    assert torch.equal(blocks[1, 1:-1], ptb.stream[3 * 62: 4 * 62])
    assert tokenizer.decode(ptb.stream[:12].tolist()).startswith("no it wasn't black monday<|endoftext|>but")
    with pytest.raises(DataError, match="too few for one block"):
        EvalSet("tiny", torch.arange(5), 64, 0)


# ---- tiny GPT-2 runs, scored at 1 and 2 ranks -------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """A tiny MDLM, AR and EDLM-NCE (from the MDLM) on PTB with the GPT-2 tokenizer."""
    from edlm_dist.training import Trainer

    os.environ["EDLM_DATA_DIR"] = str(data_dir)
    root = tmp_path_factory.mktemp("eval_runs")
    data = ["--data.dataset=ptb", "--data.tokenizer=gpt2", "--data.seq_len=32", "--training.steps=2"]
    for name, extra in {"mdlm": [], "ar": ["--training.task=ar"],
                        "nce": ["--training.task=nce", f"--nce.denoiser={root / 'mdlm'}", "--nce.ess_candidates=0"]}.items():
        Trainer(debug_config(root, f"--job.name={name}", *data, *extra)).run()
    return root


def eval_argv(runs: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(DEBUG_EVAL), "--checkpoint", ",".join(str(runs / m) for m in ("mdlm", "ar", "nce")),
            "--eval.datasets", SETS, f"--eval.output={out}", *EVAL_ARGS, *extra]


def results(out: Path) -> dict[tuple[str, str], dict]:
    """The JSON of every (model, set) under `out` (eval.output): <out>/<run>/<model>/<set>/step_*.json."""
    return {(p.parts[-3], p.parts[-2]): json.loads(p.read_text()) for p in sorted(out.glob("*/*/*/step_*.json"))}


def test_two_ranks_give_the_figures_of_one_rank_with_json_and_tensorboard(runs, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "edlm_dist.eval",
         *eval_argv(runs, tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "edlm_nce step 2 on ptb:test" in proc.stdout
    main(eval_argv(runs, tmp_path / "one"))
    one, two = results(tmp_path / "one"), results(tmp_path / "two")
    labels = {(m, s) for m in ("mdlm", "ar", "edlm_nce") for s in ("wikitext2_val", "ptb_test")}
    assert set(one) == set(two) == labels
    for key, r1 in one.items():
        r2 = two[key]
        assert (r1["world_size"], r2["world_size"]) == (1, 2)
        assert r1["sequences"] == 6 and r1["tokens"] == 6 * 32 and r1["step"] == 2
        assert r1["figures"].keys() == r2["figures"].keys()
        for name, f in r1["figures"].items():
            assert f["nats_per_token"] == pytest.approx(r2["figures"][name]["nats_per_token"], rel=1e-6, abs=1e-9), (key, name)
            assert f["stderr"] > 0 and math.isfinite(f["ppl"])
    nce = one[("edlm_nce", "ptb_test")]
    assert nce["headline"] == "coupled_n4" and nce["num_proposals"] == [2, 4]
    pairs = (("coupled", "_jackknife"), ("conservative", "_low"), ("paper", "_low"))
    assert set(nce["figures"]) == {"mdlm_nelbo", *(f"{e}{s}_n{n}" for e, side in pairs for s in ("", side)
                                                   for n in (2, 4))}
    assert nce["figures"]["paper_n4"]["kind"] == "paper estimate, not a bound"
    assert nce["figures"]["coupled_n4"]["kind"] == nce["figures"]["conservative_n4"]["kind"] == "consistent estimate"
    assert 1 <= nce["mean_ess"]["ess_coupled_n4"] <= 4
    assert set(nce["judgements"]) == {"coupled_n4", "conservative_n4", "paper_n4"}
    assert nce["judgements"]["paper_n4"]["decides"] is False
    assert one[("ar", "ptb_test")]["figures"]["nll"]["kind"] == "exact"
    assert one[("mdlm", "ptb_test")]["figures"]["nelbo"]["nats_per_token"] == pytest.approx(
        nce["figures"]["mdlm_nelbo"]["nats_per_token"], rel=1e-6)  # same denoiser, same keyed noise
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "edlm_dist.eval",
         *eval_argv(runs, tmp_path / "shared", "--eval.split=proposals", f"--checkpoint={runs / 'nce'}")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shared = results(tmp_path / "shared")[("edlm_nce", "ptb_test")]
    assert shared["split"] == "proposals" and nce["split"] == "sequences"
    assert shared["figures"]["mdlm_nelbo"] == nce["figures"]["mdlm_nelbo"]  # the same (t, xt)
    for name, f in shared["figures"].items():  # other proposals: close, within the noise
        assert abs(f["nats_per_token"] - nce["figures"][name]["nats_per_token"]) < 4 * f["stderr"] + 0.05, name
    assert read_scalars(tmp_path / "two" / "nce")["eval/ptb_test/edlm_nce/coupled_n4"][0][0] == 2  # the checkpoint's step
    ar_ppl = one[("ar", "wikitext2_val")]["figures"]["nll"]["ppl"]
    assert read_scalars(tmp_path / "two" / "ar")["eval/wikitext2_val/ar/ppl"][0][1] == pytest.approx(ar_ppl, rel=1e-5)


def test_summary_means_errors_and_paired_differences():
    values = {"mdlm_nelbo": torch.tensor([4.0, 8.0]), "coupled_n2": torch.tensor([3.0, 9.0]),
              "coupled_jackknife_n2": torch.zeros(2), "paper_n2": torch.ones(2), "paper_low_n2": torch.ones(2),
              "ess_coupled_n2": torch.tensor([1.0, 2.0])}
    for name in ("coupled_n4", "coupled_jackknife_n4", "paper_n4", "paper_low_n4", "ess_coupled_n4"):
        values[name] = values[name.replace("n4", "n2")] + 2.0
    summary = summarize(values, seq_len=2, num_proposals=2)
    mdlm = summary["figures"]["mdlm_nelbo"]
    assert mdlm["nats_per_token"] == 3.0 and mdlm["stderr"] == pytest.approx(1.0)  # per token: 2, 4
    assert mdlm["ppl"] == pytest.approx(math.exp(3.0)) and mdlm["bits_per_token"] == pytest.approx(3 / math.log(2))
    assert summary["headline"] == "coupled_n4" and summary["mean_ess"] == {"ess_coupled_n2": 1.5, "ess_coupled_n4": 3.5}
    assert summary["differences"]["coupled_n4 - mdlm_nelbo"]["nats_per_token"] == pytest.approx(1.0)
    assert summary["differences"]["coupled_n4 - coupled_n2"] == {"nats_per_token": 1.0, "stderr": 0.0}
    assert summary["figures"]["coupled_jackknife_n4"]["kind"] == "consistent estimate (jackknife bias-corrected)"
    # +1.0 ± 0.5 nats/token against MDLM: not beyond 2 s.e.
    assert summary["judgements"]["coupled_n4"] == {"kind": "consistent estimate", "ess": 3.5, "decides": False,
                                                   "verdict": "undecided", "limited_by": "noise",
                                                   "reason": "within 2 s.e. of MDLM's NELBO"}


@pytest.mark.parametrize("kind, versus, moved, companion, ess, verdict", [
    (GUARANTEED, (-1.0, 0.1), 0.5, None, 1.2, "below MDLM"),  # an upper bound below MDLM decides at once, at any ESS
    (GUARANTEED, (+1.0, 0.1), 0.0, None, 12.0, "undecided"),  # above MDLM a bound may just be loose
    (CONSISTENT, (+1.0, 0.1), 0.1, (+0.9, 0.1), 16 * ESS_FLOOR, "above MDLM"),
    (CONSISTENT, (+1.0, 0.1), 0.1, (+0.9, 0.1), 16 * ESS_FLOOR - 0.01, "cannot decide"),  # too few effective proposals
    (CONSISTENT, (-1.11, 0.27), 0.25, (-1.04, 0.27), 1.75, "cannot decide"),  # PTB's EDLM-AR, which read "below MDLM"
    (CONSISTENT, (+1.0, 0.1), 0.8, (+0.9, 0.1), 12.0, "undecided"),  # still moving with n
    (CONSISTENT, (-0.1, 0.1), 0.0, (-0.1, 0.1), 12.0, "undecided"),  # within the noise
    (CONSISTENT, (+22.4, 3.4), 3.8, (-22.6, 3.3), 12.0, "undecided"),  # its other side is below MDLM
    (CONSISTENT, (+1.0, None), 0.1, (+0.9, None), 12.0, "cannot decide"),  # one sequence: no standard error
    (PAPER, (-5.0, 0.1), 0.0, None, 1.2, "undecided"),
])
def test_each_kind_of_figure_decides_against_mdlm_by_its_own_rule(kind, versus, moved, companion, ess, verdict):
    """At 16 proposals (2n in the reproduction), as the JSON records them."""
    companion = None if companion is None else {"nats_per_token": companion[0], "stderr": companion[1]}
    result = judge(kind, {"nats_per_token": versus[0], "stderr": versus[1]}, {"nats_per_token": moved, "stderr": 0.0},
                   companion, ess, 16)
    assert result["verdict"] == verdict and result["decides"] == verdict.endswith("MDLM") and result["reason"]
    assert (result["limited_by"] == "ess") == (verdict == "cannot decide" and ess < 16 * ESS_FLOOR)


def test_figures_that_are_not_finite_or_impossible_are_withheld_with_their_reason():
    """The paper's estimate of an AR energy at a tiny ESS can fall below 0 nats (a perplexity
    below 1), an estimator can return +inf (no proposal gave the data weight), a diverged model
    NaN: none is written, logged or printed as a figure, and none is compared with MDLM."""
    values = {"mdlm_nelbo": torch.tensor([4.0, 8.0, 6.0]), "coupled_n2": torch.tensor([3.0, math.inf, 5.0]),
              "coupled_jackknife_n2": torch.tensor([3.0, 7.0, 5.0]), "paper_n2": torch.tensor([-2.0, -4.0, 1.0]),
              "paper_low_n2": torch.tensor([-3.0, -5.0, 0.0]), "ess_coupled_n2": torch.tensor([1.0, 0.0, 2.0]),
              "ess_paper_n2": torch.tensor([1.0, math.nan, 2.0])}
    for name in list(values):
        values[name.replace("n2", "n4")] = values[name] + 0.5
    summary = summarize(values, seq_len=2, num_proposals=2)
    figures = summary["figures"]
    assert figures["coupled_n4"]["nats_per_token"] is None and figures["coupled_n4"]["ppl"] is None
    assert figures["coupled_n4"]["not_reported"] == "not finite: infinite for 1 of 3 sequences"
    assert figures["paper_n4"]["not_reported"].startswith("impossible: -0.5833 nats per token, below 0")
    assert figures["paper_n4"]["kind"] == PAPER and figures["coupled_jackknife_n4"]["nats_per_token"] == 2.75
    assert summary["differences"]["coupled_n4 - mdlm_nelbo"]["nats_per_token"] is None
    assert summary["differences"]["coupled_n4 - mdlm_nelbo"]["not_reported"].startswith("coupled_n4 not finite")
    assert summary["mean_ess"]["ess_paper_n4"] is None and summary["mean_ess"]["ess_coupled_n4"] == 1.5
    for name in ("coupled_n4", "paper_n4"):
        judged = summary["judgements"][name]
        assert judged["verdict"] == "cannot decide" and not judged["decides"] and "not reported" in judged["reason"]
    json.dumps(summary, allow_nan=False)  # no NaN or infinity anywhere in what is written
    result = {"model": "edlm_ar", "step": 7, "dataset": "ptb:test", "sequences": 3, "seq_len": 2, **summary}
    scalars = tensorboard_scalars(result, "eval/ptb_test/edlm_ar")
    assert "eval/ptb_test/edlm_ar/coupled_jackknife_n4" in scalars and "eval/ptb_test/edlm_ar/paper_n4" not in scalars
    assert "eval/ptb_test/edlm_ar/ppl" not in scalars  # the headline, coupled_n4, is withheld
    assert all(math.isfinite(v) for v in scalars.values())
    printed = format_result(result)
    assert re.search(r"\*coupled_n4 +not reported: not finite: infinite for 1 of 3 sequences", printed)
    assert re.search(r" paper_n4 +not reported: impossible: -0.5833 nats per token", printed)
    assert not re.search(r"(inf|nan|-\d+\.\d+ ±)", printed.replace("infinite", "")), printed


def test_bad_arguments_are_one_line_errors(runs, tmp_path, capsys):
    cases = {
        ("--watch", str(runs / "mdlm")): "exactly one of --checkpoint",
        ("--eval.datasets", "ptb:train2"): "ptb has no split 'train2'",
        ("--eval.num_proposals=1",): "eval.num_proposals",
    }
    for extra, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(eval_argv(runs, tmp_path, *extra))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    half = tmp_path / "half" / "checkpoints" / "step_00000002"
    shutil.copytree(runs / "mdlm" / "checkpoints" / "step_00000002", half)
    shutil.copy(runs / "mdlm" / "config.toml", tmp_path / "half" / "config.toml")
    (half / "COMMITTED").unlink()
    with pytest.raises(SystemExit):
        main(["--config", str(DEBUG_EVAL), "--checkpoint", str(half)])
    assert "not committed" in capsys.readouterr().err


# ---- the service ------------------------------------------------------------------------------

class FakeTraining:
    """A training run folder whose checkpoints (copies of a real one) appear on command."""

    def __init__(self, source: Path, folder: Path) -> None:
        self.source, self.folder = source, folder

    def start(self) -> None:
        (self.folder / "checkpoints").mkdir(parents=True)
        shutil.copy(self.source / "config.toml", self.folder / "config.toml")

    def write(self, step: int, commit: bool = True) -> Path:
        target = self.folder / "checkpoints" / f"step_{step:08d}"
        shutil.copytree(self.source / "checkpoints" / "step_00000002", target, ignore=shutil.ignore_patterns("COMMITTED"))
        if commit:
            self.commit(step)
        return target

    def commit(self, step: int) -> None:
        (self.folder / "checkpoints" / f"step_{step:08d}" / "COMMITTED").write_text("{}\n")

    def result(self, step: int) -> Path:
        return self.folder / "eval" / "mdlm" / "ptb_test" / f"step_{step:08d}.json"


def service(folder: Path) -> EvalService:
    cfg = load_config(EvalProgram, DEBUG_EVAL, ["--eval.datasets=ptb:test", "--eval.num_sequences=4", "--eval.batch_size=4",
                                                  "--eval.poll_interval_s=0.05", f"--eval.watch={folder}"])
    env = init_distributed("cpu")
    return EvalService(cfg, env, LikelihoodEvaluator(cfg, env))


def test_service_scores_committed_checkpoints_once_resumes_and_stops_at_the_final_marker(runs, tmp_path):
    fake = FakeTraining(runs / "mdlm", tmp_path / "run")

    def training() -> None:
        time.sleep(0.5)  # the service starts first and waits for the run folder
        fake.start()
        fake.write(10)
        fake.write(20, commit=False)  # half-written for a while
        wait_for(fake.result(10).is_file, 60, "the step-10 result", interval=0.05)
        time.sleep(1.0)  # the service looks at the half-written checkpoint many times meanwhile
        assert not fake.result(20).exists()
        fake.commit(20)
        wait_for(fake.result(20).is_file, 60, "the step-20 result", interval=0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # told to stop

    thread = threading.Thread(target=training)
    thread.start()
    first = service(fake.folder).run()
    thread.join()
    assert first == [10, 20]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    stamps = {step: fake.result(step).stat().st_mtime_ns for step in (10, 20)}

    fake.write(30)
    (fake.folder / "finished").write_text("{}\n")
    assert service(fake.folder).run() == [30]  # restarted: nothing repeated, stops by itself
    assert {step: fake.result(step).stat().st_mtime_ns for step in (10, 20)} == stamps
    scalars = read_scalars(fake.folder / "eval")["eval/ptb_test/mdlm/nelbo"]
    assert [step for step, _ in scalars] == [10, 20, 30]
    assert len({value for _, value in scalars}) == 1  # the same weights and keyed noise each time


def test_service_reads_checkpoints_from_an_fsspec_url(runs, tmp_path):
    import fsspec

    from edlm_dist.config import save_config

    fs = fsspec.filesystem("memory")
    url = "memory://edlm-eval-test/run/checkpoints"
    fs.put(str(runs / "mdlm" / "checkpoints" / "step_00000002"), f"{url}/step_00000005", recursive=True)
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(TrainProgram, runs / "mdlm" / "config.toml")
    cfg.checkpoint.folder = url
    save_config(cfg, run / "config.toml")
    (run / "finished").write_text("{}\n")
    assert service(run).run() == [5]
    assert json.loads((run / "eval/mdlm/ptb_test/step_00000005.json").read_text())["checkpoint"] == f"{url}/step_00000005"


def damage(checkpoint: Path, how: str) -> None:
    """Damage a committed checkpoint as storage can: a truncated or missing shard, unreadable metadata."""
    shard = sorted(checkpoint.glob("*.distcp"))[0]
    if how == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif how == "missing":
        shard.unlink()
    else:
        (checkpoint / ".metadata").write_bytes(b"not a pickle")


def test_the_service_records_damaged_checkpoints_and_scores_the_good_one_after_them(runs, tmp_path, capsys,
                                                                                     monkeypatch):
    from edlm_dist.evaluation import service as service_module

    monkeypatch.setattr(service_module, "RETRY_DELAYS_S", (0.0, 0.0))
    fake = FakeTraining(runs / "mdlm", tmp_path / "run")
    fake.start()
    kinds = {10: "truncated", 20: "missing", 30: "metadata"}
    for step, how in kinds.items():
        damage(fake.write(step), how)
    fake.write(40)
    (fake.folder / "finished").write_text("{}\n")
    run = folder_digest(fake.folder)
    main(["--config", str(DEBUG_EVAL), "--watch", str(fake.folder), "--eval.datasets=ptb:test",
          "--eval.num_sequences=4", "--eval.batch_size=4", "--eval.poll_interval_s=0.05"])
    assert {name: digest for name, digest in folder_digest(fake.folder).items() if not name.startswith("eval/")} == run

    out = capsys.readouterr().out
    assert json.loads(fake.result(40).read_text())["step"] == 40  # scored after the damaged ones
    for step, how in kinds.items():
        assert not fake.result(step).exists()
        record = json.loads(fake.result(step).with_suffix(".damaged").read_text())
        checkpoint = str(fake.folder / "checkpoints" / f"step_{step:08d}")
        assert (record["status"], record["step"], record["checkpoint"], record["attempts"]) == ("damaged", step,
                                                                                               checkpoint, 3)
        assert "figures" not in record and checkpoint in record["reason"]
        assert {"truncated": "is truncated", "missing": "is missing", "metadata": ".metadata"}[how] in record["reason"]
        assert f"checkpoint {checkpoint} is damaged and was skipped: {record['reason']}" in out
        assert "(try 1 of 3); trying again in 0 s" in out
    assert "scored steps [40], damaged steps [10, 20, 30] (skipped)" in out
    events = EventAccumulator(str(fake.folder / "eval" / "tb"))
    events.Reload()
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("eval/mdlm/damaged/text_summary")}
    assert sorted(texts) == [10, 20, 30] and "is truncated" in texts[10]
    assert [step for step, _ in read_scalars(fake.folder / "eval")["eval/ptb_test/mdlm/nelbo"]] == [40]

    records = folder_digest(fake.folder / "eval")
    monkeypatch.setattr(service_module, "build_eval_model", lambda *args: pytest.fail("read a checkpoint again"))
    assert service(fake.folder).run() == []  # restarted: the records count as done
    assert folder_digest(fake.folder / "eval") == records


class FlakyFileSystem(MemoryFileSystem):
    """fsspec's memory file system whose first `failures` opens fail as a storage outage does."""

    protocol = "flaky"
    failures = 0

    def _open(self, path, *args, **kwargs):
        if FlakyFileSystem.failures > 0:
            FlakyFileSystem.failures -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return super()._open(path, *args, **kwargs)


def test_the_service_tries_a_read_error_again_and_scores_the_checkpoint(runs, tmp_path, capsys, monkeypatch):
    import fsspec

    from edlm_dist.config import save_config
    from edlm_dist.evaluation import service as service_module

    monkeypatch.setattr(service_module, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    url = "flaky://edlm-eval-flaky/run/checkpoints"
    FlakyFileSystem().put(str(runs / "mdlm" / "checkpoints" / "step_00000002"), f"{url}/step_00000005", recursive=True)
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(TrainProgram, runs / "mdlm" / "config.toml")
    cfg.checkpoint.folder = url
    save_config(cfg, run / "config.toml")
    (run / "finished").write_text("{}\n")
    monkeypatch.setattr(FlakyFileSystem, "failures", 1)  # the first try fails, the second reads it
    assert service(run).run() == [5]
    out = capsys.readouterr().out
    assert "Input/output error" in out and "(try 1 of 4)" in out and "(try 2 of 4)" not in out
    assert json.loads((run / "eval/mdlm/ptb_test/step_00000005.json").read_text())["step"] == 5
    assert not (run / "eval/mdlm/ptb_test/step_00000005.damaged").exists()


def test_a_read_error_is_the_watched_checkpoint_s_only_when_it_names_that_folder():
    from edlm_dist.evaluation.service import names_checkpoint

    step = "runs/a/checkpoints/step_00000004"
    assert names_checkpoint(f"cannot read checkpoint {step}: {step}/__0_0.distcp is truncated (5 bytes)", step)
    assert names_checkpoint(f"checkpoint {step} does not match the model built from runs/a/config.toml: x", step)
    assert not names_checkpoint("cannot read checkpoint runs/ar/checkpoints/step_00000004: [Errno 5] EIO", step)
    assert not names_checkpoint("cannot read checkpoint runs/a/checkpoints/step_000000040: [Errno 5] EIO", step)
