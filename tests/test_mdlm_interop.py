"""MDLM checkpoints in and out: tools/import_mdlm.py and tools/export_mdlm.py against checkpoints
built in each exact layout (Hugging Face safetensors and bin, a Lightning .ckpt with real
omegaconf and transformers objects and EMA weights that differ from the model's, the AR), with
logits compared to an independent statement of MDLM's forward (tests/mdlm_reference.py); every
bad input refused in one line with nothing written; an imported run through sampling,
evaluation and NCE training."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from edlm_dist.config import TrainProgram, load_config, load_run_config, save_config
from edlm_dist.energy.loading import resolve_model_config
from edlm_dist.models import build_model
from edlm_dist.runs.checkpoint import CheckpointManager
from edlm_dist.runs.weights import find_checkpoint, load_weights
from mdlm_reference import random_backbone
from run_utils import DEBUG_CONFIG, folder_digest, one_line_error

TOOLS = Path(__file__).resolve().parents[1] / "tools"
VOCAB = 50258  # GPT-2's 50257 tokens and the mask
BOS = 50256
LENGTH = 16
SIZES = {"hidden": 32, "n_blocks": 2, "n_heads": 4, "cond_dim": 16}


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


import_main, export_main = _tool("import_mdlm"), _tool("export_mdlm")


# ---- sources in MDLM's layouts ---------------------------------------------------------------

def hf_config(**changes) -> dict:
    config = {"architectures": ["MDLM"], "model_type": "mdlm", "vocab_size": VOCAB, "model_length": LENGTH,
              "hidden_dim": SIZES["hidden"], "cond_dim": SIZES["cond_dim"], "n_blocks": SIZES["n_blocks"],
              "n_heads": SIZES["n_heads"], "dropout": 0.1, "time_conditioning": False, "return_dict": False}
    return config | changes


def write_hf(folder: Path, state: dict, fmt: str = "safetensors", **config_changes) -> Path:
    """A Hugging Face folder in MDLM's layout: config.json and the weights under `backbone.`."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(hf_config(**config_changes)))
    state = {f"backbone.{k}": v.contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        save_file(state, folder / "model.safetensors")
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def hydra_config(kind: str):
    """MDLM's Hydra config as the Lightning module pickles it (an omegaconf DictConfig with
    interpolations that need MDLM's resolvers)."""
    omegaconf = pytest.importorskip("omegaconf")
    return omegaconf.OmegaConf.create({
        "mode": "train", "backbone": kind, "parameterization": "ar" if kind == "ar" else "subs",
        "time_conditioning": False, "T": 0,
        "model": {"name": "test", "type": "ddit", "hidden_size": SIZES["hidden"], "cond_dim": SIZES["cond_dim"],
                  "length": LENGTH, "n_blocks": SIZES["n_blocks"], "n_heads": SIZES["n_heads"],
                  "scale_by_sigma": True, "dropout": 0.1, **({"causal": True} if kind == "ar" else {})},
        "loader": {"global_batch_size": 512, "eval_global_batch_size": "${.global_batch_size}",
                   "batch_size": "${div_up:${.global_batch_size}, ${eval:${trainer.devices} * ${trainer.num_nodes}}}"},
        "trainer": {"devices": "${device_count:}", "num_nodes": 1},
        "training": {"ema": 0.9999}, "data": {"train": "openwebtext", "tokenizer_name_or_path": "gpt2"},
        "checkpointing": {"save_dir": "${cwd:}"},
    })


def pickled_tokenizer():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<|endoftext|>": 0, "<unk>": 1}, unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")


@pytest.fixture
def lightning_module(monkeypatch):
    """Lightning's AttributeDict (a dict subclass holding hyper_parameters), from a stand-in module."""
    for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = "lightning.fabric.utilities.data", "AttributeDict"
    sys.modules["lightning.fabric.utilities.data"].AttributeDict = AttributeDict
    return AttributeDict


def ema_of(ref: torch.nn.Module) -> list[torch.Tensor]:
    """EMA shadow weights that differ from the model's, in parameter order."""
    return [p.detach() + 0.05 * torch.randn_like(p) for p in ref.parameters()]


def write_ckpt(path: Path, ref: torch.nn.Module, kind: str, attribute_dict: type, *, shadow=None, **changes) -> Path:
    """A Lightning .ckpt of MDLM's code base: state_dict under backbone., the EMA's shadow_params,
    hyper_parameters with the Hydra config and a pickled tokenizer, and Lightning's other entries."""
    ckpt = {
        "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "2.2.1",
        "state_dict": {f"backbone.{k}": v for k, v in ref.state_dict().items()},
        "ema": {"decay": 0.9999, "num_updates": 1234, "shadow_params": shadow if shadow is not None else ema_of(ref)},
        "hyper_parameters": attribute_dict(config=hydra_config(kind), tokenizer=pickled_tokenizer()),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4}]}], "lr_schedulers": [], "loops": {},
        **changes,
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def dit_ref():
    return random_backbone(causal=False, seed=0, **SIZES)


@pytest.fixture(scope="module")
def ar_ref():
    return random_backbone(causal=True, seed=1, **SIZES)


def ids(batch: int = 3, length: int = LENGTH, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_dit_logits_match(run: Path, ref: torch.nn.Module, weights: str | None = None) -> None:
    """The imported DiT's logits over its V + 1 real columns equal MDLM's at sigma = 0 (ours at t = 0)."""
    model, _ = load_weights(find_checkpoint(run), weights)
    for length in (LENGTH, 11):  # any length
        x = ids(length=length)
        with torch.no_grad():
            expected, got = ref(x, torch.zeros(len(x))), model(x)[..., :VOCAB]
        assert (got - expected).abs().max() <= 1e-4


def load_into(ref_factory, state: dict) -> torch.nn.Module:
    """A fresh reference backbone after MDLM's strict load of `state` (every key, buffers included)."""
    fresh = ref_factory()
    fresh.load_state_dict(state, strict=True)
    return fresh


def exported(folder: Path) -> dict[str, torch.Tensor]:
    state = load_file(folder / "model.safetensors")
    assert all(k.startswith("backbone.") for k in state)
    return {k[len("backbone."):]: v for k, v in state.items()}


# ---- import and export -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_hugging_face_folder_imports_exactly_and_exports_back(tmp_path, dit_ref, fmt, capsys):
    src = write_hf(tmp_path / "mdlm-owt", dit_ref.state_dict(), fmt)
    run = tmp_path / "runs" / "mdlm-owt"
    import_main([str(src), "--out", str(run)])
    assert f"wrote {run}" in capsys.readouterr().out
    cfg = load_run_config(run / "config.toml")
    assert (cfg.training.task, cfg.data.tokenizer, cfg.data.seq_len, cfg.model.n_layers) == ("mdlm", "gpt2", LENGTH, 2)
    assert (run / "finished").is_file() and json.loads((run / "imported.json").read_text())["source"] == str(src)
    assert_dit_logits_match(run, dit_ref)

    export_main([str(run), "--out", str(tmp_path / "export")])
    state = exported(tmp_path / "export")
    original = dit_ref.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)
    assert json.loads((tmp_path / "export" / "config.json").read_text()) == json.loads((src / "config.json").read_text()) | {
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "torch_dtype": "float32"}


def test_a_lightning_checkpoint_loads_without_its_packages_and_keeps_both_weights(tmp_path, dit_ref, lightning_module,
                                                                                     monkeypatch):
    shadow = ema_of(dit_ref)
    path = write_ckpt(tmp_path / "last.ckpt", dit_ref, "dit", lightning_module, shadow=shadow)
    for name in ("omegaconf", "hydra", "transformers", "tokenizers", "lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of them fails
    run = tmp_path / "runs" / "owt"
    import_main([str(path), "--out", str(run)])
    cfg = load_run_config(run / "config.toml")
    assert cfg.training.ema_decay == 0.9999 and find_checkpoint(run).step == 1234

    ema_ref = random_backbone(causal=False, seed=0, **SIZES)
    with torch.no_grad():
        for param, value in zip(ema_ref.parameters(), shadow):
            param.copy_(value)
    assert_dit_logits_match(run, ema_ref)  # EMA by default, as for every run
    assert_dit_logits_match(run, dit_ref, "model")

    export_main([str(run), "--out", str(tmp_path / "ema")])
    export_main([str(run), "--out", str(tmp_path / "model"), "--weights", "model"])
    for folder, expected in (("ema", ema_ref.state_dict()), ("model", dit_ref.state_dict())):
        state = exported(tmp_path / folder)
        assert all(torch.equal(state[k], expected[k]) for k in expected) and state.keys() == expected.keys()
    restored = load_into(lambda: random_backbone(causal=False, seed=5, **SIZES), exported(tmp_path / "ema"))
    model, _ = load_weights(find_checkpoint(run))
    x = ids(seed=3)
    with torch.no_grad():
        assert (restored(x, torch.zeros(len(x))) - model(x)[..., :VOCAB]).abs().max() <= 1e-4


def test_mdlms_fine_tuned_from_the_hugging_face_model_nest_their_backbone(tmp_path, dit_ref, lightning_module):
    nested = {f"backbone.backbone.{k}": v for k, v in dit_ref.state_dict().items()}  # MDLM's backbone "hf_dit"
    path = write_ckpt(tmp_path / "hf_dit.ckpt", dit_ref, "hf_dit", lightning_module, state_dict=nested)
    import_main([str(path), "--out", str(tmp_path / "run")])
    assert_dit_logits_match(tmp_path / "run", dit_ref, "model")


def test_the_ar_reads_bos_and_imports_exactly(tmp_path, ar_ref, lightning_module):
    path = write_ckpt(tmp_path / "ar.ckpt", ar_ref, "ar", lightning_module)
    run = tmp_path / "runs" / "ar"
    import_main([str(path), "--out", str(run)])
    cfg = load_run_config(run / "config.toml")
    assert cfg.training.task == "ar" and cfg.model.start_token == BOS
    model, _ = load_weights(find_checkpoint(run), "model")
    y = ids(vocab=VOCAB - 1)
    with torch.no_grad():
        expected = ar_ref(torch.cat((torch.full_like(y[:, :1], BOS), y[:, :-1]), dim=1))[..., : VOCAB - 1]
        got = model(y)[..., : VOCAB - 1].log_softmax(-1)
        assert (got - expected).abs().max() <= 1e-4
        token = model.token_log_probs(y)
    assert (token - expected.gather(-1, y[..., None]).squeeze(-1)).abs().max() <= 1e-4

    export_main([str(run), "--out", str(tmp_path / "export"), "--weights", "model"])
    state, original = exported(tmp_path / "export"), ar_ref.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["backbone"] == "ar"
    import_main([str(tmp_path / "export"), "--out", str(tmp_path / "runs" / "again")])  # and back in
    again, _ = load_weights(find_checkpoint(tmp_path / "runs" / "again"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_the_ar_start_token_defaults_to_the_mask_id():
    cfg = load_config(TrainProgram, DEBUG_CONFIG, ["--training.task=ar"])
    model = build_model("ar", cfg.model, 9)
    assert model.start_token == 9
    with pytest.raises(ValueError, match="model.start_token 10 is not an input id"):
        build_model("ar", load_config(TrainProgram, DEBUG_CONFIG, ["--model.start_token=10"]).model, 9)


# ---- bad input -------------------------------------------------------------------------------

def _renamed(state: dict, old: str, new: str) -> dict:
    return {new if k == old else k: v for k, v in state.items()}


BAD_HF = {
    "no_config": (lambda s: s, {}, "has no config.json"),
    "model_type": (lambda s: s, {"model_type": "bert"}, "model_type is 'bert', expected 'mdlm'"),
    "missing": (lambda s: {k: v for k, v in s.items() if k != "blocks.1.attn_out.weight"}, {},
                "missing keys blocks.1.attn_out.weight"),
    "unexpected": (lambda s: {**s, "blocks.0.attn_qkv.bias": torch.zeros(96)}, {}, "unexpected keys blocks.0.attn_qkv.bias"),
    "misshaped": (lambda s: {**s, "output_layer.linear.bias": torch.zeros(7)}, {},
                  "mis-shaped keys output_layer.linear.bias [7] (expected [50258])"),
    "mlp_ratio": (lambda s: {**s, "blocks.0.mlp.0.weight": torch.zeros(64, 32)}, {}, "2 x the hidden size 32"),
    "time_conditioning": (lambda s: s, {"time_conditioning": True}, "embeds sigma"),
    "vocabulary": (lambda s: s, {"vocab_size": 30522}, "vocab_size 30522; only MDLM's GPT-2 models"),
    "rotary": (lambda s: {**s, "rotary_emb.inv_freq": s["rotary_emb.inv_freq"] * 2}, {}, "not the standard rotary table"),
    "no_weights": (lambda s: {}, {}, "has neither model.safetensors nor pytorch_model.bin"),
}


@pytest.mark.parametrize("case", sorted(BAD_HF))
def test_bad_hugging_face_folders_are_refused_in_one_line_writing_nothing(tmp_path, dit_ref, capsys, case):
    edit, config, message = BAD_HF[case]
    src = write_hf(tmp_path / "src", edit(dict(dit_ref.state_dict())), **config)
    if case == "no_config":
        (src / "config.json").unlink()
    if case == "no_weights":
        (src / "model.safetensors").unlink()
    (tmp_path / "runs").mkdir()
    err = one_line_error(capsys, import_main, [str(src), "--out", str(tmp_path / "runs" / "x")])
    assert message in err
    assert list((tmp_path / "runs").iterdir()) == []


def test_bad_checkpoints_are_refused_in_one_line_writing_nothing(tmp_path, dit_ref, lightning_module, capsys):
    (tmp_path / "runs").mkdir()
    out = ["--out", str(tmp_path / "runs" / "x")]
    torch.save({"foo": 1}, tmp_path / "other.ckpt")
    (tmp_path / "noise.ckpt").write_bytes(b"\x00not a checkpoint" * 10)
    cases = {
        "other.ckpt": "is not a Lightning checkpoint of MDLM (no state_dict)",
        "noise.ckpt": "cannot read",
    }
    write_ckpt(tmp_path / "sedd.ckpt", dit_ref, "dit", lightning_module)
    ckpt = torch.load(tmp_path / "sedd.ckpt", weights_only=False)
    ckpt["hyper_parameters"]["config"]["parameterization"] = "sedd"
    torch.save(ckpt, tmp_path / "sedd.ckpt")
    cases["sedd.ckpt"] = "parameterization 'sedd'; only MDLM's DiT with the subs parameterization"
    write_ckpt(tmp_path / "ema.ckpt", dit_ref, "dit", lightning_module, shadow=ema_of(dit_ref)[:-1])
    cases["ema.ckpt"] = "ema.shadow_params holds 29 tensors; MDLM's dit backbone of its config has 30 parameters"
    write_ckpt(tmp_path / "energy.ckpt", dit_ref, "dit", lightning_module,
               state_dict={**{f"backbone.{k}": v for k, v in dit_ref.state_dict().items()}, "energy.w": torch.zeros(1)})
    cases["energy.ckpt"] = "unexpected keys outside the backbone: energy.w"
    cases["absent.ckpt"] = "absent.ckpt: no such file or folder"
    for name, message in cases.items():
        err = one_line_error(capsys, import_main, [str(tmp_path / name), *out])
        assert message in err, (name, err)
    assert list((tmp_path / "runs").iterdir()) == []


def test_an_existing_run_folder_is_never_replaced(tmp_path, dit_ref, capsys):
    src = write_hf(tmp_path / "src", dit_ref.state_dict())
    run = tmp_path / "runs" / "x"
    import_main([str(src), "--out", str(run)])
    before = folder_digest(run)
    err = one_line_error(capsys, import_main, [str(src), "--out", str(run)])
    assert f"{run} exists; give a new folder" in err and folder_digest(run) == before


def test_hf_ids_need_the_hub_and_a_network(tmp_path, monkeypatch, capsys):
    out = ["--out", str(tmp_path / "x")]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    err = one_line_error(capsys, import_main, ["hf:kuleshov-group/mdlm-owt", *out])
    assert "needs huggingface_hub" in err and "download the folder of kuleshov-group/mdlm-owt" in err
    monkeypatch.delitem(sys.modules, "huggingface_hub")
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache
    err = one_line_error(capsys, import_main, ["hf:kuleshov-group/mdlm-owt", *out])
    assert "cannot download hf:kuleshov-group/mdlm-owt" in err and "pass its path instead" in err
    assert not (tmp_path / "x").exists()


def save_run(folder: Path, *overrides: str) -> Path:
    """A run folder of this project with freshly initialised weights (no training needed)."""
    cfg = load_config(TrainProgram, DEBUG_CONFIG, [f"--job.dump_folder={folder.parent}", f"--job.name={folder.name}", *overrides])
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.toml")
    model = build_model("ar" if cfg.training.task == "ar" else "dit", cfg.model, 9)
    CheckpointManager(str(folder / "checkpoints"), 1).save(1, {"model": model.state_dict()})
    return folder


@pytest.mark.parametrize("overrides, message", [
    (["--model.mlp_ratio=2"], "model.mlp_ratio is 2; MDLM's DiT and AR have 4"),
    (["--model.time_conditioning=true"], "model.time_conditioning is true"),
    (["--training.task=ar"], "blocks.0.adaLN_modulation.bias is not the identity modulation"),
])
def test_what_mdlm_cannot_express_is_refused_on_export(tmp_path, capsys, overrides, message):
    run = save_run(tmp_path / "run", *overrides)
    err = one_line_error(capsys, export_main, [str(run), "--out", str(tmp_path / "out")])
    assert message in err and not (tmp_path / "out").exists()


def test_an_imported_run_is_not_resumed_by_training(tmp_path, dit_ref, capsys):
    from edlm_dist.train import main as train

    run = tmp_path / "runs" / "owt"
    import_main([str(write_hf(tmp_path / "src", dit_ref.state_dict())), "--out", str(run)])
    before = folder_digest(run)
    err = one_line_error(capsys, train, ["--config", str(DEBUG_CONFIG), f"--job.dump_folder={run.parent}",
                                         "--job.name=owt"])
    assert "holds weights imported by tools/import_mdlm.py" in err and folder_digest(run) == before


# ---- an imported run through every entry point -------------------------------------------------

@pytest.fixture(scope="module")
def imported(tmp_path_factory, dit_ref, ar_ref) -> Path:
    """Imported MDLM and AR runs side by side (folder/runs/mdlm, folder/runs/ar)."""
    folder = tmp_path_factory.mktemp("imported")
    import_main([str(write_hf(folder / "hf_dit", dit_ref.state_dict())), "--out", str(folder / "runs" / "mdlm")])
    import_main([str(write_hf(folder / "hf_ar", ar_ref.state_dict(), backbone="ar")), "--out", str(folder / "runs" / "ar")])
    return folder


def tiny_gpt2(folder: Path, data_dir: Path) -> Path:
    """A GPT-2 with random weights and GPT-2's own tokenizer (from the shared BPE files): the
    Gen PPL oracle of the OpenWebText recipe, small."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    bpe = data_dir / "gpt2_tokenizer"
    # positional: the files are vocab_file/merges_file in transformers 4, vocab/merges in 5
    transformers.GPT2TokenizerFast(str(bpe / "encoder.json"), str(bpe / "vocab.bpe")).save_pretrained(folder)
    return folder


@pytest.mark.data
def test_an_imported_run_samples_evaluates_and_exports(imported, data_dir, monkeypatch, capsys):
    from edlm_dist.eval import main as evaluate
    from edlm_dist.sample import main as sample

    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    monkeypatch.chdir(imported)
    common = ["--runtime.device=cpu", "--metrics.progress=false"]
    edlm = ["--checkpoint", "runs/mdlm", "--sample.num_samples=2", "--sample.steps=4", "--sample.num_candidates=2",
            "--energy.kind=ar", "--energy.checkpoint=runs/ar", "--sample.batch_size=2", *common,
            f"--sample.oracle=hf:{tiny_gpt2(imported / 'gpt2', data_dir)}"]
    capsys.readouterr()
    hf_logging = sys.modules["transformers"].utils.logging
    hf_logging.disable_progress_bar()  # its model loading bar would be a second line on stderr
    try:
        err = one_line_error(capsys, sample, edlm)  # the reference row needs the run's prepared corpus
    finally:
        hf_logging.enable_progress_bar()
    assert "the reference row (sample.reference) reads the validation split" in err and "needs data.path" in err
    assert not list(imported.glob("runs/mdlm/samples/**/*.*"))  # stopped before sampling
    sample([*edlm, "--sample.reference=false"])
    summaries = list((imported / "runs/mdlm/samples").glob("*/summary.json"))
    assert len(summaries) == 1 and json.loads(summaries[0].read_text())["gen_ppl"]["gen_ppl"] > 1

    scoring = ["--eval.datasets=wikitext2", "--eval.num_sequences=4", "--eval.batch_size=2", *common]
    evaluate(["--checkpoint", "runs/mdlm", *scoring, "--energy.kind=coar", "--energy.checkpoint=runs/ar",
              "--eval.num_proposals=2"])
    evaluate(["--watch", "runs/ar", *scoring])  # the run is finished: the service scores it and stops
    results = sorted(p.relative_to(imported).as_posix() for p in imported.glob("runs/*/eval/**/*.json"))
    assert any(r.startswith("runs/mdlm/eval/") for r in results) and any(r.startswith("runs/ar/eval/") for r in results)

    export = _tool("export_safetensors")
    export(["runs/mdlm", "--out", str(imported / "mdlm.safetensors")])
    assert "wrote" in capsys.readouterr().out


@pytest.mark.data
def test_nce_fine_tunes_from_an_imported_denoiser(imported, data_dir, monkeypatch):
    from edlm_dist.training import Trainer

    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    cfg = load_config(TrainProgram, DEBUG_CONFIG, [
        f"--job.dump_folder={imported / 'runs'}", "--job.name=nce", "--training.task=nce",
        f"--nce.denoiser={imported / 'runs' / 'mdlm'}", "--data.dataset=tiny_shakespeare", "--data.tokenizer=gpt2",
        f"--data.seq_len={LENGTH}", "--training.steps=2", "--training.global_batch_size=4", "--nce.ess_candidates=0",
        "--metrics.eval_batch_size=4", "--metrics.eval_batches=1", "--sample.num_samples=1", "--sample.steps=2",
    ])
    Trainer(resolve_model_config(cfg)).run()
    nce = find_checkpoint(imported / "runs" / "nce")
    assert nce.step == 2 and nce.config.model.hidden_size == SIZES["hidden"]
    energy, _ = load_weights(nce)
    denoiser, _ = load_weights(find_checkpoint(imported / "runs" / "mdlm"))
    # the energy network started from the imported backbone: an untrained block moved only a little
    start = denoiser.state_dict()["blocks.1.attn_out.weight"]
    assert (energy.state_dict()["blocks.1.attn_out.weight"] - start).abs().max() < 0.05
