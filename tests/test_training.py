"""The training loop: the default tiny run, AR, resume, accumulation, checkpoints, CLI errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edlm_dist.config import TrainProgram, config_to_toml, load_config
from edlm_dist.data import Batch, DataError, build_dataset
from edlm_dist.train import main
from edlm_dist.runs import CheckpointError, CheckpointManager
from edlm_dist.training import Trainer
from run_utils import REPO, debug_config, read_scalars



def small_config(tmp_path: Path, *overrides: str):
    return debug_config(tmp_path, *overrides)


@pytest.mark.slow
def test_default_tiny_run_closes_most_of_the_gap_to_the_entropy_floor(tmp_path, capsys):
    main(["--config", str(REPO / "configs/tiny.toml"), f"--job.dump_folder={tmp_path}", "--metrics.progress=false"])
    run_dir = tmp_path / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    gap = summary["unigram_nll_per_token"] - summary["entropy_floor_per_token"]
    assert gap >= 1.0
    assert summary["gap_closed"] >= 0.6, summary
    assert summary["val_nll_per_token"] >= summary["entropy_floor_per_token"] - 0.05  # a bound, up to MC noise
    scalars = read_scalars(run_dir)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/nelbo_per_token"):
        assert scalars.get(tag), f"{tag} missing from TensorBoard"
    assert scalars["val/nelbo_per_token"][-1] == (300, pytest.approx(summary["val_nll_per_token"], rel=1e-6))
    assert CheckpointManager(run_dir / "checkpoints", 2).latest() == 300
    assert load_config(TrainProgram, run_dir / "config.toml") == load_config(TrainProgram, REPO / "configs/tiny.toml", [f"--job.dump_folder={tmp_path}", "--metrics.progress=false"])
    out = capsys.readouterr().out
    assert "validation NELBO" in out and "entropy floor" in out and "unigram" in out and "[3]" in out


def test_ar_task_learns_and_samples(tmp_path):
    summary = Trainer(small_config(tmp_path, "--training.task=ar", "--training.steps=30", "--optim.lr=3e-3")).run()
    assert summary["val_nll_per_token"] < summary["unigram_nll_per_token"]
    assert len(summary["samples"]) == 2 and all(summary["samples"])


def test_resume_from_a_checkpoint_is_bit_exact(tmp_path):
    common = ("--debug.deterministic=true", "--optim.lr_schedule=constant", "--checkpoint.interval=3",
              "--model.dropout=0.1")
    straight = Trainer(small_config(tmp_path / "a", "--training.steps=6", *common))
    straight.run()
    Trainer(small_config(tmp_path / "b", "--training.steps=3", *common)).run()
    resumed = Trainer(small_config(tmp_path / "b", "--training.steps=6", *common))
    assert resumed.resume() and resumed.step == 3
    resumed.run()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.shadow, resumed.ema.shadow):
        assert torch.equal(a, b)
    assert read_scalars(tmp_path / "a" / "debug")["train/loss"][-1] == read_scalars(tmp_path / "b" / "debug")["train/loss"][-1]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    whole = Trainer(small_config(tmp_path / "a", "--training.steps=2", "--model.dropout=0"))
    split = Trainer(small_config(tmp_path / "b", "--training.steps=2", "--model.dropout=0", "--training.micro_batch_size=2"))
    assert split.plan.accum_steps == 4
    for _ in range(2):
        loss_whole, loss_split = whole.train_step()["train/loss"], split.train_step()["train/loss"]
        assert loss_whole == pytest.approx(loss_split, rel=1e-5)
    for a, b in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def global_batch(rows: int, seq_len: int, step: int) -> Batch:
    return Batch(torch.zeros(rows, seq_len, dtype=torch.long), range(rows), step, rows)


def test_training_noise_depends_only_on_seed_and_step(tmp_path):
    task = Trainer(small_config(tmp_path)).task
    a, b = task.draw_noise(global_batch(8, 16, step=5)), task.draw_noise(global_batch(8, 16, step=5))
    assert torch.equal(a.t, b.t) and torch.equal(a.uniforms, b.uniforms)
    assert not torch.equal(a.t, task.draw_noise(global_batch(8, 16, step=6)).t)


def test_uncommitted_checkpoints_are_never_latest(tmp_path):
    trainer = Trainer(small_config(tmp_path, "--training.steps=1"))
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    for step in (1, 2, 3):
        manager.save(step, trainer.state_dict())
    assert manager.committed_steps() == [2, 3]  # keep_last pruned step 1
    (Path(manager.path(3)) / "COMMITTED").unlink()  # as if the save of step 3 had crashed before its marker
    assert manager.latest() == 2
    with pytest.raises(CheckpointError, match="not committed"):
        manager.load(3, trainer.state_dict())
    manager.load(2, trainer.state_dict())


def test_char_level_text_dataset(data_dir, tmp_path):
    path = data_dir / "tiny_shakespeare" / "input.txt"
    cfg = small_config(tmp_path, "--data.dataset=text", "--data.tokenizer=char", f"--data.path={path}")
    data = build_dataset(cfg.data)
    assert data.tokenizer.vocab_size == 66  # 65 characters + EOS
    train, val = data.blocks.batch("train", 0, 4), data.blocks.batch("val", 0, 4)
    for blocks in (train, val):
        assert (blocks[:, 0] == data.tokenizer.eos_id).all() and (blocks[:, -1] == data.tokenizer.eos_id).all()
    assert torch.equal(val, data.blocks.batch("val", 0, 4)) and not torch.equal(train, data.blocks.batch("train", 1, 4))
    assert data.tokenizer.decode(val[0, 1:-1].tolist()) in path.read_text()
    summary = Trainer(small_config(tmp_path, "--data.dataset=text", "--data.tokenizer=char", f"--data.path={path}",
                                   "--training.steps=3")).run()
    assert summary["gap_closed"] is None and len(summary["samples"]) == 2


def test_missing_text_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        build_dataset(small_config(tmp_path, "--data.dataset=text", "--data.tokenizer=char",
                                   f"--data.path={tmp_path}/nope.txt").data)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config", "missing.toml"], "missing.toml"),
        (["--config", "configs/tiny.toml", "--training.stpes=3"], "did you mean 'training.steps'"),
        (["--config", "configs/tiny.toml", "--training.steps=abc"], "training.steps"),
        (["--config", "configs/tiny.toml", "--training.global_batch_size=10", "--training.micro_batch_size=4"],
         "micro_batch_size"),
        (["--config", "configs/tiny.toml", "--data.dataset=text", "--data.tokenizer=char", "--data.path=/nope.txt"],
         "/nope.txt"),
    ],
)
def test_user_errors_exit_with_one_line(args, needle, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"--job.dump_folder={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err


def test_print_config_prints_the_resolved_toml(capsys):
    main(["--config", str(REPO / "configs/tiny.toml"), "--training.steps=7", "--print-config"])
    out = capsys.readouterr().out
    assert "steps = 7" in out and load_config(TrainProgram, None) != load_config(TrainProgram, REPO / "configs/tiny.toml")
    assert out == config_to_toml(load_config(TrainProgram, REPO / "configs/tiny.toml", ["--training.steps=7"]))


@pytest.fixture(scope="module")
def owt_sample_corpus(tmp_path_factory, data_dir) -> Path:
    """The shared 100-document OpenWebText sample, prepared as GPT-2 token shards."""
    out = tmp_path_factory.mktemp("owt") / "corpus"
    subprocess.run(
        [sys.executable, str(REPO / "tools/prepare_data.py"), "--source", str(data_dir / "owt_sample"),
         "--out", str(out), "--tokenizer", "gpt2", "--tokenizer-path", str(data_dir / "gpt2_tokenizer"),
         "--txt-mode", "blank_line", "--val-docs", "100", "--shard-tokens", "30000"],
        check=True, capture_output=True,
    )
    return out


@pytest.mark.parametrize("config", ["owt.toml", "owt_ar.toml"])
def test_owt_configs_run_on_the_prepared_sample(config, owt_sample_corpus, data_dir, tmp_path, monkeypatch):
    """The paper-setting configs, shrunk to a debug model, on prepared OWT shards with workers and async saves."""
    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("EDLM_OWT_DIR", str(owt_sample_corpus))
    cfg = load_config(TrainProgram, REPO / "configs" / config, [
        f"--job.dump_folder={tmp_path}", "--model.n_layers=1", "--model.hidden_size=32", "--model.n_heads=2",
        "--model.cond_dim=16", "--data.seq_len=32", "--training.global_batch_size=4", "--training.micro_batch_size=2",
        "--training.steps=2", "--parallel.compile=false", "--checkpoint.interval=1", "--metrics.eval_batches=1",
        "--metrics.eval_batch_size=2", "--sample.num_samples=1", "--sample.steps=4", "--metrics.progress=false",
    ])
    assert cfg.checkpoint.async_save and cfg.data.dataset == "openwebtext" and cfg.data.num_workers == 2
    trainer = Trainer(cfg)
    assert trainer.data.tokenizer.vocab_size == 50257 and trainer.model.padded_vocab == 50304
    summary = trainer.run()
    assert summary["step"] == 2 and trainer.checkpoints.committed_steps() == [1, 2]
    assert math.isfinite(summary["val_nll_per_token"]) and summary["gap_closed"] is None
