"""Training on a corpus prepared by tools/prepare_data.py: resume (with dataloader workers) from
token shards and raw shards, and a 2-rank checkpoint resumed on 1 rank."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_utils import run_distributed
from edlm_dist.training import Trainer
from run_utils import REPO, debug_config, read_scalars


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir) -> Path:
    """tiny-shakespeare, one document per blank-line-separated speech, char-level, both formats."""
    out = tmp_path_factory.mktemp("corpus") / "shakespeare"
    subprocess.run(
        [sys.executable, str(REPO / "tools/prepare_data.py"), "--source", str(data_dir / "tiny_shakespeare/input.txt"),
         "--out", str(out), "--tokenizer", "char", "--format", "both", "--txt-mode", "blank_line",
         "--shard-tokens", "200000", "--val-docs", "200"],
        check=True, capture_output=True,
    )
    return out


def config(folder: Path, corpus: Path, *overrides: str):
    return debug_config(folder, "--data.dataset=files", f"--data.path={corpus}", "--data.tokenizer=char",
                        "--data.seq_len=32", *overrides)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return trainer.model.state_dict()


@pytest.mark.parametrize("fmt", ["tokens", "raw"])
def test_resume_on_a_prepared_corpus_with_workers_is_bit_exact(corpus, tmp_path, fmt):
    common = (f"--data.format={fmt}", "--data.num_workers=2", "--data.shuffle_buffer=16", "--checkpoint.interval=2")
    straight = Trainer(config(tmp_path / "a", corpus, "--training.steps=4", *common))
    straight.run()
    assert straight.data.tokenizer.vocab_size == 66
    Trainer(config(tmp_path / "b", corpus, "--training.steps=2", *common)).run()
    resumed = Trainer(config(tmp_path / "b", corpus, "--training.steps=4", *common))
    resumed.run()
    assert resumed.loader.state_dict()["fingerprint"] == straight.loader.state_dict()["fingerprint"]
    for name, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[name]), name


def train_two_steps_and_save(folder: Path, corpus: Path) -> None:
    trainer = Trainer(config(folder, corpus, "--training.steps=2", "--checkpoint.interval=2"))
    trainer.run()


def test_a_two_rank_checkpoint_resumes_on_one_rank_with_the_same_batches(corpus, tmp_path):
    run_distributed(train_two_steps_and_save, 2, tmp_path / "two", corpus)
    resumed = Trainer(config(tmp_path / "two", corpus, "--training.steps=3"))
    assert resumed.resume() and resumed.step == 2
    straight = Trainer(config(tmp_path / "one", corpus, "--training.steps=3"))
    for _ in range(2):
        straight.train_step()
    assert torch.equal(resumed.loader.next_batch().tokens, straight.loader.next_batch().tokens)
    assert json.loads((tmp_path / "two" / "debug" / "finished").read_text())["step"] == 2


def test_a_missing_shard_stops_the_run_or_is_skipped_and_counted(corpus, tmp_path):
    from edlm_dist.data import DataError, build_dataset

    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    (broken / "train-00001.tokens").unlink()
    with pytest.raises(DataError, match=r"train-00001\.tokens: listed in .* but missing"):
        build_dataset(config(tmp_path, broken).data)
    trainer = Trainer(config(tmp_path, broken, "--data.on_error=skip", "--training.steps=2"))
    intact = build_dataset(config(tmp_path, corpus).data)
    assert trainer.data.fingerprint != intact.fingerprint  # a resume on the intact corpus would be noticed
    trainer.run()
    scalars = read_scalars(trainer.run_folder.path)
    assert scalars["data/skipped_records"][-1][1] == 1.0
