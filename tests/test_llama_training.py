"""Training on imported Llama-family denoisers: the NCE energy fine-tuned from a LLaDA or Dream
exactly as EDLM fine-tunes it from MDLM, and continued training (`training.init_from`), both
resumable bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edlm_dist.config import ConfigError
from edlm_dist.interop.hf_runs import import_hf, read_source
from edlm_dist.models import LlamaEnergy
from edlm_dist.runs.weights import find_checkpoint, load_weights
from edlm_dist.training import Trainer
from edlm_dist.train import main as train_main
from hf_reference import VOCAB, write_layout
from distributed_utils import run_distributed
from run_utils import debug_config, one_line_error

SEQ_LEN = 16
DATA = ("--data.synthetic_states", str(VOCAB - 1), "--model.dropout=0.0", "--training.ema_decay=0.0")  # 96 ids


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    """Tiny LLaDA and Dream folders imported as runs of SEQ_LEN tokens (the LLaDA twice)."""
    root = tmp_path_factory.mktemp("imported")
    runs = {}
    for layout in ("llada", "dream"):
        write_layout(layout, root / f"{layout}-hf")
        runs[layout] = import_hf(read_source(root / f"{layout}-hf"), root / layout, seq_len=SEQ_LEN)
    runs["llada-copy"] = import_hf(read_source(root / "llada-hf"), root / "llada-copy", seq_len=SEQ_LEN)
    return runs


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.model.state_dict().items()}


def straight_and_resumed(tmp_path: Path, *overrides: str) -> tuple[Trainer, Trainer]:
    """A run of 4 steps in one go, and one stopped at step 2 (its checkpoint) and resumed to 4."""
    straight = Trainer(debug_config(tmp_path / "straight", *DATA, *overrides, "--training.steps=4"))
    straight.run()
    first = Trainer(debug_config(tmp_path / "resumed", *DATA, *overrides, "--training.steps=2",
                                 "--checkpoint.interval=2"))
    first.run()
    resumed = Trainer(debug_config(tmp_path / "resumed", *DATA, *overrides, "--training.steps=4",
                                   "--checkpoint.interval=2"))
    resumed.run()
    return straight, resumed


@pytest.mark.parametrize("layout", ["llada", "dream"])
def test_the_nce_energy_starts_as_its_imported_denoiser_and_resumes_bit_for_bit(tmp_path, imported, layout):
    nce = ("--training.task=nce", f"--nce.denoiser={imported[layout]}", "--nce.ess_candidates=2",
           "--nce.ess_sequences=2")
    cfg = debug_config(tmp_path / "fresh", *DATA, *nce)
    assert cfg.model.family == "llama" and cfg.model.mask_id == 90 and not cfg.model.logit_shift
    fresh = Trainer(cfg)
    assert isinstance(fresh.model, LlamaEnergy)
    denoiser, _ = load_weights(find_checkpoint(str(imported[layout])))
    energy_state, denoiser_state = fresh.model.state_dict(), denoiser.state_dict()
    shared = [name for name in energy_state if name in denoiser_state]
    assert {name.split(".")[0] for name in shared} == {"embed", "blocks", "norm"}
    assert all(torch.equal(energy_state[name], denoiser_state[name]) for name in shared)
    x0 = torch.randint(0, 90, (3, SEQ_LEN))
    xt = torch.where(torch.rand(3, SEQ_LEN) < 0.5, torch.full_like(x0, 90), x0)
    assert torch.equal(fresh.model(x0, xt), torch.zeros(3))  # the initial joint is the denoiser itself

    straight, resumed = straight_and_resumed(tmp_path, *nce)
    assert straight.step == resumed.step == 4
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in weights(straight).items())
    assert not torch.equal(straight.model.masked_marker.detach(), torch.zeros(32))  # it learned


def test_continued_training_starts_from_the_imported_weights_and_resumes_bit_for_bit(tmp_path, imported):
    init = (f"--training.init_from={imported['dream']}",)
    cfg = debug_config(tmp_path / "fresh", *DATA, *init)
    assert cfg.model.family == "llama" and cfg.model.logit_shift and cfg.model.mask_id == 90
    fresh = Trainer(cfg)
    dream, _ = load_weights(find_checkpoint(str(imported["dream"])))
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in dream.state_dict().items())
    assert fresh.task.tokens.mask_id == 90 and fresh.task.tokens.num_tokens == VOCAB

    straight, resumed = straight_and_resumed(tmp_path, *init)
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in weights(straight).items())
    assert not all(torch.equal(v, straight.model.state_dict()[k]) for k, v in dream.state_dict().items())


def test_init_from_refusals_are_one_line(tmp_path, imported, capsys):
    base = ["--config", "configs/debug.toml", f"--job.dump_folder={tmp_path}", *DATA]
    cases = {
        "training.init_from = " + str(tmp_path / 'nowhere') + ": folder not found": [f"--training.init_from={tmp_path / 'nowhere'}"],
        "is a 'mdlm' run; expected a 'ar' run": [f"--training.init_from={imported['llada']}", "--training.task=ar"],
        "does not apply to training.task = 'nce'": [f"--training.init_from={imported['llada']}", "--training.task=nce",
                                                    f"--nce.denoiser={imported['llada']}"],
        "the tokenizer has 9 ids but model.vocab_size is 96": [f"--training.init_from={imported['llada']}",
                                                                "--data.synthetic_states=8"],
    }
    for expected, argv in cases.items():
        assert expected in one_line_error(capsys, train_main, [*base, *argv])
    assert not (tmp_path / "debug").exists()


def test_init_from_is_fixed_on_resume(tmp_path, imported):
    Trainer(debug_config(tmp_path, *DATA, f"--training.init_from={imported['llada']}", "--training.steps=1")).run()
    other = Trainer(debug_config(tmp_path, *DATA, f"--training.init_from={imported['llada-copy']}",
                                 "--training.steps=2"))
    with pytest.raises(ConfigError, match="training.init_from cannot change when"):
        other.run()


def _two_rank_nce(denoiser: str, root: str) -> None:
    """Every rank: NCE from the imported LLaDA sharded over two ranks (FSDP2), 4 steps in one go
    and 2 + 2 with a resume; the same weights."""
    nce = ("--training.task=nce", f"--nce.denoiser={denoiser}", "--nce.ess_candidates=2", "--nce.ess_sequences=2",
           "--runtime.backend=gloo")
    straight, resumed = straight_and_resumed(Path(root), *nce)
    assert type(straight.model.masked_marker).__name__ == "DTensor"
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor.full_tensor(), resumed.model.state_dict()[name].full_tensor()), name


def test_two_rank_nce_from_an_imported_llada_resumes_bit_for_bit(tmp_path, imported):
    run_distributed(_two_rank_nce, 2, str(imported["llada"]), str(tmp_path))
