"""The memory plan counts what the code allocates (the tensors a block saves, the parameters FSDP2
leaves on a rank), and a run that cannot fit its device is refused in one line before anything is
built or written (tools/bench_memory.py compares whole plans with measured peaks)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

import edlm_dist.runs.memory_check as memory_check
from edlm_dist.config import TrainProgram, load_config
from edlm_dist.config.schema import ModelConfig
from edlm_dist.models import DiTBlock, build_model, rotary_tables
from edlm_dist.models.layers import rope_frequencies, rotary_tables_of
from edlm_dist.models.llama import LlamaBlock
from edlm_dist.runs.memory_check import MemoryPlanError, check_fits, host_available_bytes
from edlm_dist.runs.memory_plan import (
    FP32,
    ModelShape,
    Precision,
    activation_bytes,
    block_saved_bytes,
    llama_block_saved_bytes,
    training_plan,
)
from edlm_dist.sample import main as sample
from edlm_dist.train import main as train
from edlm_dist.training import Trainer
from run_utils import DEBUG_CONFIG, DEBUG_SAMPLE, REPO, debug_config, folder_digest, one_line_error

TINY = REPO / "configs" / "tiny.toml"
HUGE = "--model.hidden_size=1000000"


PRECISIONS = {"float32": Precision(4, 4, 4, False), "autocast": Precision(2, 4, 2, True),
              "bf16 weights": Precision(2, 2, 2, False)}


def saved_bytes(block: torch.nn.Module, forward: Callable[[], torch.Tensor], autocast: bool) -> int:
    """Bytes of the distinct storages that `forward()` (a forward of `block`) saves for backward,
    leaving out its parameters and autocast's copies of them (shaped like a parameter, or its
    transpose)."""
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    weight_shapes = {shape for p in block.parameters() for shape in (tuple(p.shape), tuple(reversed(p.shape)))}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and tuple(tensor.shape) not in weight_shapes:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    block.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            forward()
    return sum(saved.values())


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["float32", "autocast", "bf16 weights"])
def test_a_block_saves_what_the_plan_counts(dropout, mode):
    batch, length, hidden, mlp_ratio = 8, 40, 48, 4  # B L differs from every weight dimension
    block = DiTBlock(hidden, 4, 16, mlp_ratio, dropout, causal=False)
    x = torch.randn(batch, length, hidden, requires_grad=True)
    c = torch.randn(batch, 16, requires_grad=True)
    if mode == "bf16 weights":  # what FSDP2 computes with: bf16 weights and a bf16 residual stream
        block, x, c = block.bfloat16(), x.detach().bfloat16().requires_grad_(), c.detach().bfloat16().requires_grad_()
    planned = block_saved_bytes(batch * length * hidden, PRECISIONS[mode], mlp_ratio, dropout)
    cos, sin = rotary_tables(length, hidden // block.n_heads, x.device)
    measured = saved_bytes(block, lambda: block(x, c, cos, sin), mode == "autocast")
    # the plan leaves out what does not grow with the hidden size: LayerNorm statistics, the
    # attention's log-sum-exp, the rotary tables and the adaLN vectors (under 4% here)
    assert measured * 0.96 <= planned <= measured


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["float32", "autocast", "bf16 weights"])
def test_a_llama_block_saves_what_the_plan_counts(dropout, mode):
    # grouped-query attention (2 key/value heads of 4) and a SwiGLU width that is no multiple of
    # the hidden size; B L differs from every weight dimension
    batch, length, hidden, heads, kv_heads, width = 8, 40, 48, 4, 2, 80
    config = ModelConfig(family="llama", hidden_size=hidden, n_heads=heads, n_kv_heads=kv_heads,
                         intermediate_size=width, dropout=dropout, vocab_size=10, qkv_bias=True)
    block = LlamaBlock(config, causal=False)
    x = torch.randn(batch, length, hidden, requires_grad=True)
    if mode == "bf16 weights":
        block, x = block.bfloat16(), x.detach().bfloat16().requires_grad_()
    cos, sin = rotary_tables_of(rope_frequencies(hidden // heads, 10000.0, x.device), length)
    planned = llama_block_saved_bytes(batch * length, hidden, kv_heads * hidden // heads, width, PRECISIONS[mode],
                                      dropout)
    measured = saved_bytes(block, lambda: block(x, cos, sin), mode == "autocast")
    # left out: the norms' statistics, the attention's log-sum-exp and the rotary tables (under 2.5% here)
    assert measured * 0.975 <= planned <= measured


LLAMA_SIZES = ["--model.family=llama", "--model.vocab_size=100", "--model.n_layers=3", "--model.hidden_size=64",
               "--model.n_heads=4", "--model.n_kv_heads=2", "--model.intermediate_size=176"]
GPT2_SIZES = ["--model.family=gpt2", "--model.vocab_size=100", "--model.n_layers=2", "--model.hidden_size=64",
              "--model.n_heads=4", "--model.tie_embeddings=true", "--data.seq_len=64", "--training.task=ar"]
FAMILIES = {  # name -> overrides, rows of the embedding and output layer
    "llama denoiser, GQA, biases, padded rows": ([*LLAMA_SIZES, "--model.qkv_bias=true", "--model.embedding_rows=192"],
                                                 192),
    "llama causal LM, tied": ([*LLAMA_SIZES, "--model.tie_embeddings=true", "--training.task=ar"], 128),
    "gpt2": (GPT2_SIZES, 128),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_plan_of_any_family_counts_the_exact_parameters_and_their_shards(family):
    overrides, rows = FAMILIES[family]
    cfg = load_config(TrainProgram, TINY, overrides)
    kind = "dit" if cfg.training.task == "mdlm" else "ar"
    numel = sum(p.numel() for p in build_model(kind, cfg.model, 100).parameters())
    shape = ModelShape.of(kind, cfg.model, 100)
    assert shape.numel() == numel and shape.padded_vocab == rows
    for world in (1, 8):
        plan = {item.name.split(" (")[0]: item.bytes for item in training_plan(cfg, world, 100, "cuda").items}
        local = shape.numel(world)  # FSDP2 splits each tensor's first dimension, padding it to the ranks
        assert plan["parameters"] == plan["EMA weights"] == plan["gradients"] == FP32 * local
        assert plan["AdamW state"] == 2 * FP32 * local
        assert (local == numel) == (world == 1) and local >= numel / world
    modes = [activation_bytes(shape, 4, 64, PRECISIONS["bf16 weights"], mode, 2) for mode in ("none", "selective", "full")]
    assert min(modes[:2]) > modes[2]  # (2 blocks, every second checkpointed, save more than none: one recomputed)


@pytest.mark.parametrize("kind", ["dit", "ar", "energy"])
def test_the_parameter_count_comes_from_the_meta_model_and_fsdp2_shards_it_as_measured(kind):
    cfg = load_config(TrainProgram, TINY)
    shape = ModelShape.of(kind, cfg.model, 49)
    assert shape.numel() == sum(p.numel() for p in build_model(kind, cfg.model, 49).parameters())
    if kind == "dit":  # docs/performance.md: 6 250 568 bytes of parameters + AdamW on each of 2 ranks,
        assert 12 * shape.numel(2) + 200 == 6_250_568  # 200 of them the 50 AdamW step counters


def test_the_peak_is_the_resident_memory_plus_the_largest_phase_and_sharding_divides_the_state():
    cfg = load_config(TrainProgram, TINY, ["--model.dropout=0.1"])
    plan = training_plan(cfg, 1, 49, "cpu")
    assert plan.peak == plan.resident + max(plan.phase_bytes().values())
    assert plan.peak_phase == "blocks backward"  # the activations dominate at a vocabulary of 49
    shape = ModelShape.of("dit", cfg.model, 49)
    float32 = Precision(4, 4, 4, False)
    modes = [activation_bytes(shape, 64, 64, float32, mode, 2) for mode in ("none", "selective", "full")]
    assert modes[0] > modes[1] > modes[2]
    sharded = training_plan(cfg, 2, 49, "cpu")
    assert sharded.items[0].bytes == 4 * shape.numel(2) < plan.items[0].bytes
    assert "FSDP2 over 2" in sharded.setting and "micro-batch 32 x 64" in sharded.setting


def test_a_plan_larger_than_the_device_is_refused_naming_the_figures_and_what_to_change(monkeypatch):
    plan = training_plan(load_config(TrainProgram, TINY), 1, 49, "cpu")
    monkeypatch.setattr(memory_check, "memory_capacity", lambda device: (plan.peak, "the test's device"))
    assert "fits: the test's device" in check_fits(plan, torch.device("cpu"))
    monkeypatch.setattr(memory_check, "memory_capacity", lambda device: (plan.peak - 1, "the test's device"))
    with pytest.raises(MemoryPlanError) as refused:
        check_fits(plan, torch.device("cpu"))
    assert str(refused.value) == (
        "memory plan: training needs 211.87 MiB per rank (blocks backward; the largest item: activations, "
        "checkpointing none, 182.00 MiB), but the test's device: set parallel.activation_checkpoint = full, or lower "
        "training.micro_batch_size or data.seq_len")


def test_the_host_memory_is_read():
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    assert 0 < host_available_bytes() <= total


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished debug run; its folder is `run`, its dump folder `run.parent`."""
    root = tmp_path_factory.mktemp("planned")
    Trainer(debug_config(root, "--training.steps=3")).run()
    return root / "debug"


def test_check_and_train_refuse_a_model_that_cannot_fit_in_one_line_and_change_nothing(run, tmp_path, capsys):
    before = folder_digest(run)
    for switches in (["--check"], []):
        err = one_line_error(capsys, train, ["--config", str(DEBUG_CONFIG), f"--job.dump_folder={run.parent}", HUGE,
                                             *switches])
        assert err.startswith("error: memory plan: training needs ") and " TiB per rank" in err
        assert "lower model.hidden_size or model.n_layers, or shard over more ranks" in err
    assert folder_digest(run) == before
    fresh = tmp_path / "runs"
    one_line_error(capsys, train, ["--check", "--config", str(DEBUG_CONFIG), f"--job.dump_folder={fresh}", HUGE])
    assert not fresh.exists()


def test_check_prints_the_plan_on_stderr_and_the_run_folder_on_stdout(run, capsys):
    train(["--check", "--config", str(DEBUG_CONFIG), f"--job.dump_folder={run.parent}", "--training.steps=9"])
    out, err = capsys.readouterr()
    assert out.strip() == str(run.resolve())
    assert err.startswith("memory plan per rank, training: mdlm on 1 x cpu (one process)") and " per rank fits: " in err


def test_sampling_that_cannot_fit_is_refused_before_loading_anything(run, tmp_path, capsys):
    out = tmp_path / "samples"
    err = one_line_error(capsys, sample, ["--config", str(DEBUG_SAMPLE), "--checkpoint", str(run), "--out", str(out),
                                          "--sample.num_candidates=1", "--sample.batch_size=1000000000"])
    assert err.startswith("error: memory plan: sampling needs ") and err.endswith(": lower sample.batch_size")
    assert not out.exists()
