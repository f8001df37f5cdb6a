"""tools/export_safetensors.py: exact weights, metadata and sidecar, rebuilt logits, step choice, errors."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from edlm_dist.config import TrainProgram, load_config, save_config
from edlm_dist.models import build_model
from edlm_dist.training import Trainer
from run_utils import REPO, debug_config, folder_digest



def _load_tool():
    spec = importlib.util.spec_from_file_location("export_safetensors", REPO / "tools/export_safetensors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def train(folder: Path, *overrides: str) -> Trainer:
    trainer = Trainer(debug_config(folder, "--training.steps=2", "--checkpoint.interval=1", *overrides))
    trainer.run()
    return trainer


def run_dir(trainer: Trainer) -> Path:
    return Path(trainer.cfg.job.dump_folder) / trainer.cfg.job.name


@pytest.fixture(scope="module")
def mdlm(tmp_path_factory) -> Trainer:
    return train(tmp_path_factory.mktemp("mdlm"))


@pytest.fixture(scope="module")
def ar(tmp_path_factory) -> Trainer:
    return train(tmp_path_factory.mktemp("ar"), "--training.task=ar", "--training.ema_decay=0")


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor.detach().cpu()), name


def run_main(argv: list[str], capsys) -> str:
    tool.main(argv)
    return capsys.readouterr().out


def fails(argv: list[str], capsys) -> str:
    """The one-line message of a user error (exit status 2)."""
    with pytest.raises(SystemExit) as exc:
        tool.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_exports_ema_by_default_and_model_on_request(mdlm, tmp_path, capsys):
    out = run_main([str(run_dir(mdlm))], capsys)
    ema_file = run_dir(mdlm) / "export/step_00000002_ema.safetensors"
    assert str(ema_file) in out
    assert_same_tensors(load_file(ema_file), mdlm.ema.state_dict()["weights"])

    model_file = tmp_path / "model.safetensors"
    run_main([str(run_dir(mdlm)), "--weights", "model", "--out", str(model_file)], capsys)
    assert_same_tensors(load_file(model_file), mdlm.model.state_dict())
    assert not any(p.name.endswith(".tmp") for p in run_dir(mdlm).rglob("*"))


def test_metadata_and_sidecar_hold_the_resolved_config(mdlm, capsys):
    run_main([str(run_dir(mdlm) / "checkpoints/step_00000002"), "--weights", "model"], capsys)
    path = run_dir(mdlm) / "export/step_00000002_model.safetensors"
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    assert metadata == {
        "format": "edlm_dist-v1", "config": metadata["config"], "step": "2", "weights": "model",
        "task": "mdlm", "vocab_size": str(mdlm.data.tokenizer.vocab_size),
    }
    sidecar = path.with_suffix(".toml")
    assert sidecar.read_text() == metadata["config"]
    assert load_config(TrainProgram, sidecar) == mdlm.cfg


@pytest.mark.parametrize("kind", ["mdlm", "ar"])
def test_model_rebuilt_from_the_export_gives_the_trained_logits(kind, request, tmp_path, capsys):
    trainer = request.getfixturevalue(kind)
    run_main([str(run_dir(trainer)), "--weights", "model", "--out", str(tmp_path / "w.safetensors")], capsys)
    cfg = load_config(TrainProgram, tmp_path / "w.toml")
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        vocab_size = int(f.metadata()["vocab_size"])
    model = build_model(trainer.task.model_kind, cfg.model, vocab_size, seed=cfg.job.seed + 1)
    model.load_state_dict(load_file(tmp_path / "w.safetensors"))
    model.eval()
    trainer.model.eval()
    tokens = torch.randint(0, vocab_size, (2, cfg.data.seq_len), generator=torch.Generator().manual_seed(0))
    args = (tokens,) if kind == "ar" else (tokens, torch.tensor([0.3, 0.7]))
    with torch.no_grad():
        assert torch.equal(model(*args), trainer.model(*args))


def test_step_selects_an_older_checkpoint(mdlm, capsys):
    run_main([str(run_dir(mdlm)), "--step", "1", "--weights", "model"], capsys)
    path = run_dir(mdlm) / "export/step_00000001_model.safetensors"
    with safe_open(path, "pt") as f:
        assert f.metadata()["step"] == "1"
    assert not torch.equal(load_file(path)["embed.weight"], mdlm.model.state_dict()["embed.weight"])


def test_run_without_ema_exports_model_weights_and_refuses_ema(ar, capsys):
    run_main([str(run_dir(ar))], capsys)
    assert_same_tensors(load_file(run_dir(ar) / "export/step_00000002_model.safetensors"), ar.model.state_dict())
    err = fails([str(run_dir(ar)), "--weights", "ema"], capsys)
    assert "no EMA weights" in err and str(run_dir(ar) / "checkpoints/step_00000002") in err


def test_user_errors_are_one_line_and_exit_2(mdlm, tmp_path, capsys):
    assert str(tmp_path / "nope") in fails([str(tmp_path / "nope")], capsys)
    err = fails([str(run_dir(mdlm)), "--step", "7"], capsys)
    assert "step 7" in err and "[1, 2]" in err

    run = tmp_path / "run"
    shutil.copytree(run_dir(mdlm), run)
    (run / "checkpoints/step_00000002/COMMITTED").unlink()
    err = fails([str(run / "checkpoints/step_00000002")], capsys)
    assert "not committed" in err and "step_00000002" in err
    assert "[1]" in fails([str(run), "--step", "2"], capsys)

    (run / "checkpoints/step_00000001/__0_0.distcp").unlink()
    err = fails([str(run / "checkpoints/step_00000001")], capsys)
    assert "cannot read checkpoint" in err and "__0_0.distcp" in err
    (run / "checkpoints/step_00000001/COMMITTED").unlink()
    assert "no committed checkpoint" in fails([str(run)], capsys)

    cfg = load_config(TrainProgram, run / "config.toml")
    cfg.checkpoint.folder = "s3://bucket/ckpts"
    save_config(cfg, run / "config.toml")
    assert "s3://bucket/ckpts" in fails([str(run)], capsys)

    (run / "config.toml").unlink()
    assert str(run / "config.toml") in fails([str(run)], capsys)
    assert str(run / "config.toml") in fails([str(run / "checkpoints/step_00000001")], capsys)


def test_an_export_replaces_files_only_with_overwrite_and_never_goes_into_a_run_folder(mdlm, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    run_main([str(run_dir(mdlm)), "--weights", "model", "--out", str(out)], capsys)
    exported = folder_digest(tmp_path)
    assert f"{out} already exists: give --overwrite" in fails([str(run_dir(mdlm)), "--out", str(out)], capsys)
    (tmp_path / "w.safetensors").unlink()  # the sidecar alone is refused too
    assert f"{tmp_path / 'w.toml'} already exists" in fails([str(run_dir(mdlm)), "--out", str(out)], capsys)
    run_main([str(run_dir(mdlm)), "--weights", "ema", "--out", str(out), "--overwrite"], capsys)
    with safe_open(out, "pt") as f:
        assert f.metadata()["weights"] == "ema"
    assert folder_digest(tmp_path)["w.toml"] == exported["w.toml"]

    run = folder_digest(run_dir(mdlm))
    for argv in ([], ["--overwrite"]):  # its sidecar would replace the run's config.toml
        err = fails([str(run_dir(mdlm)), "--out", str(run_dir(mdlm) / "config.safetensors"), *argv], capsys)
        assert f"the folder of --out {run_dir(mdlm)} is a training run folder" in err
    assert folder_digest(run_dir(mdlm)) == run
