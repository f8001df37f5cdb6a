"""Hugging Face models in and out: tools/import_hf.py and tools/export_hf.py on tiny random
checkpoints in every layout (tests/hf_reference.py: transformers' Llama, Qwen2 and GPT-2 written by
save_pretrained; LLaDA's and Dream's keys and names, single and sharded), their logits against an
independent forward to 1e-4 in float32 in one process and under 2-rank FSDP2, exports that
round-trip bit for bit, and every bad input refused in one line with nothing written."""

from __future__ import annotations

import importlib.util
import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from distributed_utils import run_distributed
from edlm_dist.config import load_run_config, save_config
from edlm_dist.config.schema import ParallelConfig
from edlm_dist.interop.hf_layout import LAYOUTS as HF_LAYOUTS, read_architecture
from edlm_dist.models import CausalLM, build_model
from edlm_dist.runs.checkpoint import CheckpointManager
from edlm_dist.runs.weights import find_checkpoint, load_weights, run_logits
from hf_reference import EOS, LAYOUTS, LENGTH, MASK, VOCAB, dream_config, llada_config, write_layout
from run_utils import debug_config, folder_digest, one_line_error

TOOLS = Path(__file__).resolve().parents[1] / "tools"
IDS = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(0))
TASKS = {"llama": "ar", "qwen2": "ar", "gpt2": "ar", "llada": "mdlm", "dream": "mdlm"}


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


import_main, export_main = _tool("import_hf"), _tool("export_hf")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.Tensor]]:
    """Every layout's folder and its reference logits on IDS."""
    root = tmp_path_factory.mktemp("hf")
    return {name: (root / name, write_layout(name, root / name)(IDS)) for name in LAYOUTS}


@pytest.fixture(scope="module")
def imported(sources: dict[str, tuple[Path, torch.Tensor]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every layout imported once in this process."""
    root = tmp_path_factory.mktemp("runs")
    for name, (folder, _) in sources.items():
        import_main([str(folder), "--out", str(root / name)])
    return {name: root / name for name in sources}


# ---- import: the forward, the config, the provenance ------------------------------------------

@pytest.mark.parametrize("name", LAYOUTS)
def test_imported_logits_match_the_independent_forward(name, sources, imported):
    _, reference = sources[name]
    logits = run_logits(imported[name], IDS)
    assert logits.shape == (2, LENGTH, VOCAB) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", LAYOUTS)
def test_imported_run_states_its_model_and_where_it_came_from(name, sources, imported):
    layout = name.partition("-")[0]
    run = imported[name]
    cfg = load_run_config(run / "config.toml")
    assert cfg.training.task == TASKS[layout] and cfg.training.ema_decay == 0.0
    assert cfg.model.family == ("gpt2" if layout == "gpt2" else "llama")
    assert cfg.model.vocab_size == VOCAB and cfg.model.embedding_rows == VOCAB
    provenance = json.loads((run / "imported.json").read_text())
    assert provenance["layout"] == layout and provenance["source"] == str(sources[name][0])
    assert provenance["config"] == json.loads((sources[name][0] / "config.json").read_text())
    assert (run / "finished").is_file() and find_checkpoint(run).step == 0
    if layout in ("llada", "dream"):
        assert cfg.model.mask_id == MASK and provenance["special_ids"]["mask"] == MASK
        assert provenance["special_ids"]["eos"] == EOS
        assert cfg.model.logit_shift == (layout == "dream") and cfg.model.qkv_bias == (layout == "dream")
    else:
        assert cfg.model.mask_id == -1 and cfg.model.start_token == provenance["special_ids"]["bos"]
    assert provenance["dtype"] == ("bfloat16" if name in ("llada-sharded", "dream-sharded") else "float32")


def test_a_tokenizer_json_sets_the_token_ids_and_the_rest_is_padding(sources, tmp_path):
    src = tmp_path / "llada"
    shutil.copytree(sources["llada"][0], src)
    specials = {f"<s{i}>": i for i in (85, 88, MASK, EOS, 92)}  # ids 86, 87, 89 unused; EOS: config.json's
    tokenizer = json.loads(Tokenizer(WordLevel({**{f"t{i}": i for i in range(85)}, **specials}, "t0")).to_str())
    tokenizer["added_tokens"] = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True} for text, i in specials.items()]
    (src / "tokenizer.json").write_text(json.dumps(tokenizer))  # read by the `tokenizers` library
    import_main([str(src), "--out", str(tmp_path / "run")])
    cfg = load_run_config(tmp_path / "run" / "config.toml")
    assert cfg.model.vocab_size == 93 and cfg.model.embedding_rows == VOCAB and cfg.model.mask_id == MASK
    assert json.loads((tmp_path / "run" / "imported.json").read_text())["vocab_size_from"] == "tokenizer.json"
    torch.testing.assert_close(run_logits(tmp_path / "run", IDS), sources["llada"][1], atol=1e-4, rtol=0)


# ---- export: bit for bit ----------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYOUTS)
def test_export_round_trips_bit_for_bit(name, sources, imported, tmp_path):
    source = sources[name][0]
    export_main([str(imported[name]), "--out", str(tmp_path / "out")])
    weights = {f: d for f, d in folder_digest(source).items() if f.endswith((".safetensors", ".index.json"))}
    exported = folder_digest(tmp_path / "out")
    assert {f: d for f, d in exported.items() if f.endswith(".safetensors")} == \
        {f: d for f, d in weights.items() if f.endswith(".safetensors")}
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads((source / "config.json").read_text())
    if "sharded" in name:
        index = "model.safetensors.index.json"
        assert json.loads((tmp_path / "out" / index).read_text()) == json.loads((source / index).read_text())


@pytest.mark.parametrize("layout", list(HF_LAYOUTS))
def test_written_config_reads_back_as_the_same_model(layout, imported):
    run = imported[next(name for name in LAYOUTS if name.startswith(layout))]
    model = load_run_config(run / "config.toml").model
    arch = read_architecture(HF_LAYOUTS[layout].write(model, 64), "written")
    assert arch.layout == layout and arch.model_config(model.vocab_size, model.start_token) == model


def test_export_in_another_dtype_and_shards(imported, tmp_path):
    export_main([str(imported["dream"]), "--out", str(tmp_path / "out"), "--dtype", "bfloat16",
                 "--max-shard-gb", str(20e3 / 2**30)])
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    tensors = {k: v for f in files for k, v in load_file(tmp_path / "out" / f).items()}
    assert set(tensors) == set(index["weight_map"]) and {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_export_refuses_what_a_layout_cannot_hold(imported, tmp_path, capsys):
    err = one_line_error(capsys, export_main, [str(imported["llada"]), "--out", str(tmp_path / "o"), "--layout", "qwen2"])
    assert "the qwen2 layout cannot hold this model" in err and "'mdlm' run" in err
    err = one_line_error(capsys, export_main, [str(imported["llada"]), "--out", str(tmp_path / "o"), "--layout", "dream"])
    assert "always have biases" in err and "logit_shift is false" in err
    assert not (tmp_path / "o").exists()


def test_export_refuses_a_dit_run(tmp_path, capsys):
    cfg = debug_config(tmp_path)
    run = tmp_path / cfg.job.name
    model = build_model("dit", cfg.model, 8)
    CheckpointManager(str(run / "checkpoints"), keep_last=1).save(1, {"model": model.state_dict()})
    save_config(cfg, run / "config.toml")
    err = one_line_error(capsys, export_main, [str(run), "--out", str(tmp_path / "o")])
    assert "dit-family run" in err and "export_mdlm.py" in err


# ---- bad input: one line, nothing written -----------------------------------------------------

def _edit_tensors(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))


BREAKAGES = {
    "unknown tensor": ("dream", lambda f: _edit_tensors(f, lambda s: s.update(extra=torch.zeros(2))),
                       "unexpected tensors extra"),
    "missing tensor": ("dream", lambda f: _edit_tensors(f, lambda s: s.pop("model.norm.weight")),
                       "missing tensors model.norm.weight"),
    "wrong shape": ("llada", lambda f: _edit_tensors(f, lambda s: s.update({
        "model.transformer.blocks.0.ff_out.weight": torch.zeros(32, 40)})),
        "mis-shaped tensors model.transformer.blocks.0.ff_out.weight [32, 40] (expected [32, 48])"),
    "wrong dtype": ("gpt2", lambda f: _edit_tensors(f, lambda s: s.update({
        "transformer.wpe.weight": s["transformer.wpe.weight"].to(torch.int32)})),
        "tensor transformer.wpe.weight is I32; expected a float dtype"),
    "mixed dtypes": ("llama", lambda f: _edit_tensors(f, lambda s: s.update({
        "model.norm.weight": s["model.norm.weight"].half()})), "is F16 while others are F32"),
    "missing shard": ("dream-sharded", lambda f: (f / "model-00002-of-00002.safetensors").unlink(),
                      "shard"),
    "index disagrees": ("llada-sharded", lambda f: (f / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.transformer.wte.weight": "model-00001-of-00002.safetensors"}})), "against"),
    "truncated shard": ("qwen2-sharded", lambda f: (f / "model-00003-of-00004.safetensors").write_bytes(
        (f / "model-00003-of-00004.safetensors").read_bytes()[:-9]), "is truncated"),
    "no weights": ("llama", lambda f: (f / "model.safetensors").unlink(), "holds neither model.safetensors"),
    "unknown model type": ("llama", lambda f: _edit_config(f, model_type="mistral"), "model_type 'mistral'"),
    "o_proj bias": ("llama", lambda f: _edit_config(f, attention_bias=True), "attention_bias = True is not supported"),
    "yarn rope": ("dream", lambda f: _edit_config(f, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
                  "rope type 'yarn' is not supported"),
    "llada swiglu": ("llada", lambda f: _edit_config(f, activation_type="swiglu"), "activation_type = 'swiglu'"),
    "sliding window": ("qwen2", lambda f: _edit_config(f, use_sliding_window=True), "use_sliding_window"),
    "missing size": ("llada", lambda f: _edit_config(f, d_model=None), "d_model must be an integer, got None"),
    "ungrouped heads": ("dream", lambda f: _edit_config(f, num_key_value_heads=3),
                        "4 attention heads do not group over 3 key/value heads"),
    "odd head size": ("llama", lambda f: _edit_config(f, num_attention_heads=32, head_dim=None),
                      "must give an even head size"),
    "mask outside the tokenizer": ("dream", lambda f: (f / "tokenizer.json").write_text(json.dumps(
        {"model": {"vocab": {"a": 0, "b": 1}}})), "mask_token_id 90 is not one of the 2 token ids (tokenizer.json)"),
    "no start token": ("gpt2", lambda f: _edit_config(f, bos_token_id=None), "give --start-token ID"),
    "start token outside": ("qwen2", lambda f: _edit_config(f, bos_token_id=VOCAB),
                            f"start token {VOCAB} is not one of the {VOCAB} rows"),
    "non-finite weights": ("dream", lambda f: _edit_tensors(f, lambda s: s.update({"model.norm.weight": torch.tensor(
        [float("nan")] * 32)})), "tensor model.norm.weight is not finite"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_bad_input_is_refused_in_one_line_with_nothing_written(case, sources, tmp_path, capsys):
    name, breakage, expected = BREAKAGES[case]
    src = tmp_path / "src"
    shutil.copytree(sources[name][0], src)
    breakage(src)
    err = one_line_error(capsys, import_main, [str(src), "--out", str(tmp_path / "runs" / "run")])
    assert expected in err, err
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_an_existing_run_folder_is_refused(sources, imported, capsys):
    before = folder_digest(imported["gpt2"])
    err = one_line_error(capsys, import_main, [str(sources["gpt2"][0]), "--out", str(imported["gpt2"])])
    assert "exists" in err and folder_digest(imported["gpt2"]) == before


# ---- two ranks: FSDP2 import and forward ------------------------------------------------------

def _two_rank_work(sources: dict[str, str], references: dict[str, torch.Tensor], root: str) -> None:
    """Every rank: import each layout collectively (each reads its rows), load it sharded (FSDP2)
    and compare its logits with the reference; then a bf16 forward and backward of a sharded,
    activation-checkpointed LLaDA denoiser."""
    from edlm_dist.distributed import build_mesh, init_distributed, parallelize_model
    from edlm_dist.interop.hf_runs import import_hf, read_source

    init_distributed("cpu", "gloo")
    mesh = build_mesh(ParallelConfig(), 2, "cpu")
    for name, folder in sources.items():
        out = import_hf(read_source(folder), Path(root) / name)
        prepare = partial(parallelize_model, cfg=ParallelConfig(), mesh=mesh, param_dtype=torch.float32)
        model, _ = load_weights(find_checkpoint(out), prepare=prepare)
        assert type(model.embed.weight).__name__ == "DTensor"
        with torch.no_grad():
            logits = model(IDS, next_token=True) if isinstance(model, CausalLM) else model(IDS)
        torch.testing.assert_close(logits, references[name], atol=1e-4, rtol=0)
    checkpointed = ParallelConfig(activation_checkpoint="full")
    prepare = partial(parallelize_model, cfg=checkpointed, mesh=mesh, param_dtype=torch.bfloat16)
    model, _ = load_weights(find_checkpoint(Path(root) / "llada"), prepare=prepare)
    model.train()
    logits = model(IDS)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), references["llada"], atol=0.15, rtol=0.05)
    logits.float().logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.to_local().isfinite().all() for g in grads)
    assert all(g.dtype == torch.float32 for g in grads)  # reduced in float32 onto the float32 masters


def test_two_rank_fsdp_import_and_forward_match(sources, imported, tmp_path):
    names = ["llama", "qwen2", "gpt2", "llada", "dream-sharded"]
    run_distributed(_two_rank_work, 2, {n: str(sources[n][0]) for n in names}, {n: sources[n][1] for n in names},
                    str(tmp_path))
    for name in names:  # the sharded import wrote the same checkpoint as the single process
        one, _ = load_weights(find_checkpoint(imported[name]))
        two, _ = load_weights(find_checkpoint(tmp_path / name))
        assert json.loads((tmp_path / name / "imported.json").read_text())["world_size"] == 2
        for (key, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
            assert torch.equal(a, b), key


# ---- config keys of the new families ----------------------------------------------------------

def test_importer_configs_survive_the_config_loader(imported):
    from edlm_dist.config import config_to_toml
    for run in imported.values():
        cfg = load_run_config(run / "config.toml")
        assert config_to_toml(cfg) == (run / "config.toml").read_text()


def test_llada_and_dream_defaults_come_from_their_config_classes():
    dream = read_architecture({k: v for k, v in dream_config().items() if k not in ("rms_norm_eps", "rope_theta",
                                                                                    "mask_token_id")}, "d")
    assert dream.fields["norm_eps"] == 1e-6 and dream.fields["rope_theta"] == 10000.0
    assert dream.fields["mask_id"] == 151666  # DreamConfig's default mask_token_id
    llada = read_architecture({k: v for k, v in llada_config().items() if k not in ("rms_norm_eps", "weight_tying")},
                              "l")
    assert llada.fields["norm_eps"] == 1e-5 and llada.fields["tie_embeddings"] is True  # LLaDA ModelConfig defaults


@pytest.mark.slow
def test_a_two_rank_import_holds_well_under_the_model_per_rank(tmp_path):
    """The bound the 1B-parameter run of tools/bench_import.py shows (docs/performance.md), on a
    scaled-down synthetic sharded checkpoint: each rank's peak under 0.75 x the model's bytes."""
    records = _tool("bench_import")(["--params", "3e7", "--json", str(tmp_path / "memory.jsonl")])
    assert [r["rank"] for r in records] == [0, 1]
    for record in records:
        assert record["params"] > 2.5e7 and record["model_bytes"] == 4 * record["params"]
        assert 0.5 < record["ratio"] < 0.75, record  # at least its half of the weights, far below all of them


def test_a_tied_run_exports_to_one_safetensors_file_and_rebuilds(imported, tmp_path):
    export_main_safetensors = _tool("export_safetensors")
    export_main_safetensors([str(imported["qwen2"]), "--out", str(tmp_path / "qwen2.safetensors")])
    cfg = load_run_config(tmp_path / "qwen2.toml")
    model = build_model("ar", cfg.model, cfg.model.vocab_size)
    model.load_state_dict(load_file(tmp_path / "qwen2.safetensors"))
    assert model.head.weight is model.embed.weight
    torch.testing.assert_close(model(IDS, next_token=True), run_logits(imported["qwen2"], IDS), atol=0, rtol=0)
