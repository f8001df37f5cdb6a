"""Datasets by name on the real files of the shared data folder."""

from __future__ import annotations

import pytest
import torch

from edlm_dist.config import TrainProgram, load_config
from edlm_dist.data import DataError, build_dataset
from run_utils import DEBUG_CONFIG


def data_config(*overrides: str):
    return load_config(TrainProgram, DEBUG_CONFIG, list(overrides)).data


@pytest.mark.parametrize(
    "name,tokenizer,train_file,val_file",
    [
        ("wikitext2", "gpt2", "wikitext2/wiki.train.tokens", "wikitext2/wiki.valid.tokens"),
        ("ptb", "char", "ptb/ptb.train.txt", "ptb/ptb.valid.txt"),
    ],
)
def test_named_datasets_use_their_own_splits(name, tokenizer, train_file, val_file, data_dir, monkeypatch):
    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    data = build_dataset(data_config(f"--data.dataset={name}", f"--data.tokenizer={tokenizer}", "--data.seq_len=32"))
    val = data.blocks.batch("val", 0, 4)
    assert val.shape == (4, 32) and (val[:, 0] == data.tokenizer.eos_id).all()
    assert data.tokenizer.decode(val[0, 1:-1].tolist()) in (data_dir / val_file).read_text()
    assert data.tokenizer.decode(data.blocks.batch("train", 3, 2)[1, 1:-1].tolist()) in (data_dir / train_file).read_text()


def test_tiny_shakespeare_holds_out_its_tail(data_dir, monkeypatch):
    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    data = build_dataset(data_config("--data.dataset=tiny_shakespeare", "--data.tokenizer=char", "--data.val_fraction=0.1"))
    assert data.tokenizer.vocab_size == 66
    text = (data_dir / "tiny_shakespeare/input.txt").read_text()
    val_text = data.tokenizer.decode(data.blocks.batch("val", 0, 1)[0, 1:-1].tolist())
    assert text.index(val_text) >= 0.89 * len(text)


def test_text8_reads_the_given_file_with_its_split(tmp_path, monkeypatch):
    monkeypatch.setattr("edlm_dist.data.datasets.TEXT8_SPLIT", (900, 950))  # 90M / 5M / 5M, scaled down
    path = tmp_path / "text8"
    path.write_text("abc def " * 125)
    data = build_dataset(data_config("--data.dataset=text8", "--data.tokenizer=char", f"--data.path={path}"))
    assert len(data.blocks.splits["train"]) == 900 and len(data.blocks.splits["val"]) == 50


def test_fingerprint_identifies_the_data(data_dir, monkeypatch):
    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    a = build_dataset(data_config("--data.dataset=ptb", "--data.tokenizer=char"))
    b = build_dataset(data_config("--data.dataset=ptb", "--data.tokenizer=char"))
    c = build_dataset(data_config("--data.dataset=tiny_shakespeare", "--data.tokenizer=char"))
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["--data.dataset=lambada", "--data.tokenizer=gpt2"], "evaluation set"),
        (["--data.dataset=files", "--data.tokenizer=gpt2", "--data.path=/nowhere/corpus"], "/nowhere/corpus"),
        (["--data.dataset=openwebtext", "--data.tokenizer=gpt2"], "tools/prepare_data.py"),
        (["--data.dataset=ptb", "--data.tokenizer=synthetic"], "synthetic"),
        (["--data.dataset=ptbb", "--data.tokenizer=char"], "unknown dataset 'ptbb'; did you mean 'ptb'?"),
        (["--data.dataset=owt", "--data.tokenizer=gpt2"], "unknown dataset 'owt'; known: synthetic, text, files"),
    ],
)
def test_bad_dataset_settings_name_the_problem(overrides, needle, data_dir, monkeypatch):
    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    with pytest.raises(DataError, match=needle.replace(".", r"\.")):
        build_dataset(data_config(*overrides))


def test_missing_data_dir_is_explained(monkeypatch):
    monkeypatch.delenv("EDLM_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="EDLM_DATA_DIR"):
        build_dataset(data_config("--data.dataset=ptb", "--data.tokenizer=char"))


def test_resuming_on_other_data_is_refused(tmp_path, data_dir, monkeypatch):
    from edlm_dist.training import Trainer
    from run_utils import debug_config

    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    Trainer(debug_config(tmp_path, "--training.steps=2", "--checkpoint.interval=2")).run()
    other = Trainer(debug_config(tmp_path, "--training.steps=4", "--data.synthetic_concentration=0.7"))
    with pytest.raises(DataError, match="fingerprint"):
        other.resume()
    allowed = Trainer(debug_config(tmp_path, "--training.steps=4", "--data.synthetic_concentration=0.7",
                                   "--data.allow_fingerprint_mismatch=true"))
    assert allowed.resume() and allowed.step == 2
    assert isinstance(allowed.loader.next_batch().tokens, torch.Tensor)


@pytest.mark.parametrize("name", ["wikitext2", "ptb"])
def test_data_path_is_the_data_root_or_the_dataset_folder(name, data_dir, monkeypatch):
    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    default = build_dataset(data_config(f"--data.dataset={name}", "--data.tokenizer=char")).fingerprint
    for folder in (data_dir, data_dir / name):
        given = build_dataset(data_config(f"--data.dataset={name}", "--data.tokenizer=char", f"--data.path={folder}"))
        assert given.fingerprint == default, folder


def test_a_data_path_without_the_files_names_both_places(tmp_path):
    with pytest.raises(DataError, match=rf"data.path: ptb.train.txt not found in {tmp_path}: give the data root"):
        build_dataset(data_config("--data.dataset=ptb", "--data.tokenizer=char", f"--data.path={tmp_path}"))


def test_eval_sets_take_the_data_root_or_the_set_folder(data_dir, monkeypatch):
    from edlm_dist.data.eval_sets import load_eval_set, parse_eval_sets

    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    run = load_config(TrainProgram, DEBUG_CONFIG, ["--data.dataset=ptb", "--data.tokenizer=word"])
    tokenizer = build_dataset(run.data).tokenizer
    default = load_eval_set(parse_eval_sets("ptb:test")[0], tokenizer, run).stream
    for folder in (data_dir, data_dir / "ptb"):
        given = load_eval_set(parse_eval_sets(f"ptb:test={folder}")[0], tokenizer, run).stream
        assert torch.equal(given, default), folder
