"""Training on a corpus prepared by tools/prepare_data.py: resume (with dataloader workers) from
token shards and raw shards, and a 2-rank checkpoint resumed on 1 rank."""

from __future__ import annotations

import json
import re
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


@pytest.mark.parametrize("fmt", ["tokens", "raw"])
def test_a_shard_damaged_on_disk_stops_the_run_before_its_data_trains(corpus, tmp_path, fmt):
    """data.verify_shards = false and dataloader workers: the first read of damaged data stops the
    run at step 0 with one line naming the shard and where it is damaged, and nothing is committed."""
    from edlm_dist.data import DataError

    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    trainer = Trainer(config(tmp_path, broken, "--data.verify_shards=false", f"--data.format={fmt}",
                             "--data.num_workers=2", "--training.steps=2"))
    if fmt == "tokens":  # a token of the first block that step 0 reads, replaced by another valid id
        blocks = trainer.loader.blocks
        offset = int(blocks.epoch_order(0)[0]) * blocks.span + 3
        shards = trainer.data.blocks.manifest.splits["train"]["token_shards"]
        while offset >= shards[0]["tokens"]:
            offset, shards = offset - shards[0]["tokens"], shards[1:]
        path = broken / shards[0]["path"]
        with open(path, "r+b") as f:
            f.seek(2 * offset)
            token = f.read(1)[0]
            f.seek(2 * offset)
            f.write(bytes([token ^ 1]))
        chunk = offset // 1024 * 1024
        end = min(chunk + 1024, shards[0]["tokens"])
        expected = (f"{path}: token offsets {chunk}-{end} (bytes {2 * chunk}-{2 * end}) do not match their CRC-32 in "
                    f"{broken / shards[0]['checks']}")
    else:  # every train shard, in the middle of its one frame
        for path in broken.glob("train-*.jsonl.zst"):
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x10
            path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        trainer.run()
    message = str(info.value)
    if fmt == "tokens":
        assert message == expected
    else:
        path = re.match(rf"({broken}/train-\d{{5}}\.jsonl\.zst): zstd frame at compressed byte 0: corrupt zstd data: ",
                        message).group(1)
        low, high = map(int, re.search(r"compressed bytes (\d+)-(\d+)", message).groups())
        assert low <= Path(path).stat().st_size // 2 < high
    marker = json.loads((tmp_path / "debug" / "failed").read_text())
    assert (marker["step"], marker["reason"]) == (0, message) and "\n" not in message
    assert not list((tmp_path / "debug" / "checkpoints").glob("step_*"))


def test_a_corpus_prepared_before_check_files_is_still_read_and_checked(corpus, tmp_path):
    """Format v1 (no check files): trusted as hashed by the trainer under data.verify_shards, hashed
    whole by the reader on its first read without it."""
    from edlm_dist.data import BatchPlan, DataError, build_dataset
    from test_prepare import to_format_v1

    old = tmp_path / "v1"
    shutil.copytree(corpus, old)
    to_format_v1(old)
    verified = build_dataset(config(tmp_path, old).data).train_loader(BatchPlan(4))
    assert verified.blocks.corpus.shards_verified and verified.next_batch().tokens.shape == (4, 32)
    for path in old.glob("train-*.tokens"):  # damaged everywhere: the first read meets it
        data = bytearray(path.read_bytes())
        data[::64] = bytes(b ^ 1 for b in data[::64])
        path.write_bytes(bytes(data))
    unverified = build_dataset(config(tmp_path, old, "--data.verify_shards=false").data).train_loader(BatchPlan(4))
    with pytest.raises(DataError, match=rf"^{old}/train-\d{{5}}\.tokens: token offsets 0-\d+ \(bytes 0-\d+\) are in a "
                                        rf"shard whose sha256 is [0-9a-f]{{16}}\.\.\., the corpus manifest says"):
        unverified.next_batch()
