"""Memory plans: the bytes per rank that a program will need, from its config and world size alone
(a model's shapes are read from it on the meta device), so that a run that cannot fit is refused
before anything is built or written (`edlm_dist.runs.memory_check`), and a job can be sized before
it is submitted (`python -m edlm_dist.train --check` prints its plan).

A plan is a list of items, each resident (held from start to end) or held during one or more
phases of the work; the peak is the resident bytes plus the largest phase. Figures count tensors
only (not the data, the interpreter or the CUDA context) and are for the eager model (a compiled
block usually saves less). What the code allocates, and so what is counted:

- Parameters, AdamW's two states, the EMA and the gradients are float32, each a 1/`dp_shard` slice
  of every tensor's first dimension under FSDP2 (HSDP replicates them over `dp_replicate`). FSDP2
  also holds gathered copies in the compute dtype: the root module's (embeddings, conditioning,
  output layer; gathered from the first forward to the end of backward) and two blocks' (the one
  computing and the one prefetched; every block with `parallel.reshard_after_forward = false`),
  and in backward one block's unsharded gradients. One process computing in bf16 autocasts
  instead, and autocast keeps a bf16 copy of every weight it casts.
- Sampling holds its models whole on every rank, their weights float32 (with autocast's bf16
  copies), or with `runtime.inference_weights = "compute"` in the compute dtype (no copies; the
  residual stream is then in the compute dtype, as under FSDP2).
- Activations are the tensors autograd saves, per element of the hidden states [B, L, hidden]
  (the DiT's `block_saved_bytes`; a Llama-family block's `llama_block_saved_bytes` also counts
  its key/value width, grouped-query attention's, and its SwiGLU width); a checkpointed block
  keeps its input, and backward recomputes one block at a time. A forward without gradients holds
  one block's local tensors (`block_working_bytes`, `llama_block_working_bytes`). A gpt2-family
  block is counted as the DiT's (an approximation: its MLP is as wide and it has no adaLN).
- Parameters are counted from the model of the config's family built on the meta device, the
  padded embedding rows and output columns (`model.embedding_rows`) included.
- The loss reads logits [B, L, padded vocabulary] in the compute dtype: `ar` takes a float32
  log-softmax of every position, `mdlm` of the masked positions, of which the worst micro-batch
  holds a fraction 1 - micro / (2 global) in expectation (times are stratified over the global
  batch, and a micro-batch takes consecutive strata). In backward each of those float32 arrays
  gets a gradient, and a few are alive at once.
- Sampling draws float64 Gumbel noise at most `MAX_NOISE_ELEMENTS` values at a time, keeps the
  denoiser's logits while the k candidates are scored, and scores them `max_batch` at a time.

docs/performance.md ("Memory plan") compares the plans with the peak memory measured on a CPU
(tools/bench_memory.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edlm_dist.config import SampleProgram, TrainProgram
from edlm_dist.config.schema import DataConfig, ModelConfig
from edlm_dist.data import BatchPlan, build_dataset, run_tokenizer
from edlm_dist.data.tokenizers import GPT2_VOCAB_SIZE
from edlm_dist.diffusion.sampling import MAX_NOISE_ELEMENTS
from edlm_dist.distributed import compute_dtype
from edlm_dist.distributed.parallelize import mesh_shape
from edlm_dist.models import MODEL_KINDS, meta_model

FP32, FP64, INT64 = 4, 8, 8
RESIDENT = "resident"
# a training micro-batch's phases: the end of its forward, the loss's backward, the blocks' backward
STEP_PHASES = ("forward", "loss backward", "blocks backward")
# float64 arrays of [rows, V] that a Gumbel-max draw holds at once: the uniforms, the noise, the
# logits in float64 and their sum (with the chunk of logits it was given, in their own dtype)
GUMBEL_ARRAYS = 4


@dataclass(frozen=True)
class MemoryItem:
    """One figure of a plan, held in `phases` (("resident",): throughout; (): shown for comparison,
    not counted); `remedy` says which settings lower it."""

    name: str
    bytes: int
    phases: tuple[str, ...]
    remedy: str


@dataclass(frozen=True)
class MemoryPlan:
    """The bytes per rank that `program` needs in `setting` (one line), item by item."""

    program: str
    setting: str
    items: tuple[MemoryItem, ...]

    @property
    def resident(self) -> int:
        return sum(item.bytes for item in self.items if RESIDENT in item.phases)

    def phase_bytes(self) -> dict[str, int]:
        """Bytes of each phase beyond the resident ones, in the order the phases first appear."""
        phases: dict[str, int] = {}
        for item in self.items:
            for phase in item.phases:
                if phase != RESIDENT:
                    phases[phase] = phases.get(phase, 0) + item.bytes
        return phases

    @property
    def peak_phase(self) -> str:
        phases = self.phase_bytes()
        return max(phases, key=phases.__getitem__) if phases else RESIDENT

    @property
    def peak(self) -> int:
        """The most bytes held at once: the resident items plus the largest phase."""
        return self.resident + max(self.phase_bytes().values(), default=0)

    def largest(self) -> MemoryItem:
        """The largest item held at the peak: the first thing to lower."""
        return max((item for item in self.items if {RESIDENT, self.peak_phase} & set(item.phases)),
                   key=lambda item: item.bytes)

    def table(self) -> str:
        """The plan as a small table: one line per item (bytes, when it is held), then the peak."""
        rows = [(item.name, format_bytes(item.bytes), ", ".join(item.phases) or "not counted") for item in self.items]
        rows.append((f"peak ({RESIDENT} + {self.peak_phase})", format_bytes(self.peak), ""))
        width = max(len(name) for name, _, _ in rows)
        lines = [f"memory plan per rank, {self.program}: {self.setting}"]
        lines += [f"  {name:<{width}}  {size:>10}  {phases}".rstrip() for name, size, phases in rows]
        return "\n".join(lines)


def format_bytes(count: int) -> str:
    """`count` bytes in binary units, e.g. 1.50 GiB."""
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


@dataclass(frozen=True)
class Precision:
    """Bytes per element of what a forward computes: `compute` (matmul inputs and outputs),
    `stream` (the residual stream: bf16 when the weights are bf16, FSDP2's gathered ones or a
    model loaded in the compute dtype, float32 otherwise, as under autocast), `dropout_mask`
    (what dropout saves: a bool mask on CUDA, the scaled noise in the compute dtype on a CPU),
    and whether one process autocasts float32 weights to bf16 (keeping a copy of each)."""

    compute: int
    stream: int
    dropout_mask: int
    autocast: bool

    @classmethod
    def of(cls, mixed_precision: str, device_type: str, sharded: bool, compute_weights: bool = False) -> Precision:
        """The precision of `mixed_precision` on `device_type`, under FSDP2 (`sharded`) or in one
        process, whose weights are float32 or (`compute_weights`) in the compute dtype themselves."""
        compute = compute_dtype(mixed_precision, torch.device(device_type)).itemsize
        low_weights = sharded or compute_weights
        return cls(compute, compute if low_weights else FP32, 1 if device_type == "cuda" else compute,
                   compute < FP32 and not low_weights)

    @property
    def name(self) -> str:
        return dtype_name(self.compute)


def dtype_name(itemsize: int) -> str:
    """The floating-point dtype of `itemsize` bytes a plan counts: bf16 or float32."""
    return "bf16" if itemsize < FP32 else "float32"


@dataclass(frozen=True)
class ModelShape:
    """What a plan needs of a model: its width, depth and vocabulary, and its parameters' shapes
    (from the model on the meta device), those of one block apart from the root's."""

    n_layers: int
    hidden: int
    mlp_ratio: int
    dropout: float
    family: str
    kv_width: int  # key/value heads x head size (grouped-query attention: less than hidden)
    width: int  # the MLP's hidden width (intermediate_size)
    vocab: int
    padded_vocab: int
    block_shapes: tuple[tuple[int, ...], ...]
    root_shapes: tuple[tuple[int, ...], ...]
    has_logits: bool  # the energy network ends in one scalar per sequence instead

    @classmethod
    def of(cls, kind: str, config: ModelConfig, vocab_size: int) -> ModelShape:
        model = meta_model(kind, config, vocab_size)
        block = tuple(tuple(p.shape) for p in model.blocks[0].parameters())
        root = tuple(tuple(p.shape) for name, p in model.named_parameters() if not name.startswith("blocks."))
        width = config.intermediate_size or config.mlp_ratio * config.hidden_size
        kv_width = (config.n_kv_heads or config.n_heads) * (config.hidden_size // config.n_heads)
        return cls(config.n_layers, config.hidden_size, -(-width // config.hidden_size), config.dropout,
                   config.family, kv_width, width, vocab_size, model.padded_vocab, block, root, kind != "energy")

    def numel(self, shard: int = 1) -> int:
        """Parameters per rank when each tensor's first dimension is split over `shard` ranks
        (FSDP2 pads it to a multiple of `shard`)."""
        shapes = (*self.block_shapes * self.n_layers, *self.root_shapes)
        return sum(math.ceil(shape[0] / shard) * math.prod(shape[1:]) for shape in shapes)

    @property
    def block_numel(self) -> int:
        return sum(math.prod(shape) for shape in self.block_shapes)

    @property
    def root_numel(self) -> int:
        return sum(math.prod(shape) for shape in self.root_shapes)

    @property
    def largest_numel(self) -> int:
        return max(math.prod(shape) for shape in (*self.block_shapes, *self.root_shapes))

    def elements(self, rows: int, seq_len: int) -> int:
        """Elements of the hidden states [rows, L, hidden] of one forward."""
        return rows * seq_len * self.hidden

    @property
    def llama(self) -> bool:
        return self.family == "llama"

    def block_saved(self, rows: int, seq_len: int, precision: Precision) -> int:
        """Bytes one block saves for backward in a forward over `rows` sequences."""
        if self.llama:
            return llama_block_saved_bytes(rows * seq_len, self.hidden, self.kv_width, self.width, precision,
                                           self.dropout)
        return block_saved_bytes(self.elements(rows, seq_len), precision, self.mlp_ratio, self.dropout)

    def block_working(self, rows: int, seq_len: int, precision: Precision) -> int:
        """Bytes one block holds in a forward without gradients over `rows` sequences."""
        if self.llama:
            return llama_block_working_bytes(rows * seq_len, self.hidden, self.kv_width, self.width, precision)
        return block_working_bytes(self.elements(rows, seq_len), precision, self.mlp_ratio)

    def block_backward(self, rows: int, seq_len: int, precision: Precision) -> int:
        """What a block's backward holds beyond its saved tensors, over `rows` sequences."""
        if self.llama:  # the gradients of the SwiGLU's gate and up outputs, and of the block's output
            return rows * seq_len * (2 * self.width + self.hidden) * precision.compute
        return block_backward_bytes(self.elements(rows, seq_len), precision, self.mlp_ratio)


def block_saved_bytes(elements: int, precision: Precision, mlp_ratio: int, dropout: float) -> int:
    """Bytes one block saves for backward, `elements` = B L hidden. Per element: the float32
    inputs of its two LayerNorms (8), their outputs in the stream dtype (2), and in the compute
    dtype the qkv input and output (1 + 3, the output kept by v), the rotated q and k (2), the
    attention output (1), the attention projection's and the MLP's outputs, kept by their gates
    (2), the MLP input (1) and its hidden before and after GELU (2 mlp_ratio); with dropout, its
    two masks. (Tensors that do not grow with the hidden size, such as LayerNorm statistics and
    the rotary tables, are left out: tests/test_memory_plan.py checks the count.)"""
    per_element = 8 + 2 * precision.stream + (10 + 2 * mlp_ratio) * precision.compute
    if dropout > 0:
        per_element += 2 * precision.dropout_mask
    return elements * per_element


def block_working_bytes(elements: int, precision: Precision, mlp_ratio: int) -> int:
    """Bytes one block holds at once without saving for backward: its input and the residual
    after attention (stream dtype), the modulated MLP input (stream dtype) and, in the compute
    dtype, its matmul copy, the qkv output (3), the rotated q and k (2), the attention output and
    the MLP hidden before and after GELU (the block's local variables live until it returns)."""
    return elements * (3 * precision.stream + (7 + 2 * mlp_ratio) * precision.compute)


def llama_block_saved_bytes(tokens: int, hidden: int, kv_width: int, width: int, precision: Precision,
                            dropout: float) -> int:
    """Bytes a Llama-family block (`models.llama.LlamaBlock`) saves for backward over `tokens`
    positions. Per element of the hidden states: each RMSNorm's float32 input (2 x 4) and its
    normalised output in the stream dtype (2), the rotated queries and the attention output in the
    compute dtype (2), and the projections' inputs: the two norms' outputs (stream dtype), or under
    autocast the bf16 copy each of q, k, v, gate and up makes (5); per element of the key/value
    width (n_kv_heads x head size): the rotated keys and the values (2); per element of the SwiGLU
    width: the gate, its SiLU, the up projection and their product (4); with dropout its two masks.
    The rotary tables are float32 temporaries, not saved. Small tensors (the norms' statistics, the
    attention's log-sum-exp) are left out: tests/test_memory_plan.py checks the count."""
    inputs = 5 * precision.compute if precision.autocast else 2 * precision.stream
    per_element = 8 + 2 * precision.stream + 2 * precision.compute + inputs
    if dropout > 0:
        per_element += 2 * precision.dropout_mask
    return tokens * (hidden * per_element + kv_width * 2 * precision.compute + width * 4 * precision.compute)


def llama_block_working_bytes(tokens: int, hidden: int, kv_width: int, width: int, precision: Precision) -> int:
    """Bytes a Llama-family block holds at once without saving for backward, at its MLP (an
    estimate from its local variables): its input, the residual after attention and the MLP norm's
    output (stream dtype), the norm's float32 copy, the rotated queries (compute dtype); the
    rotated keys and the values (2 x the key/value width); the SiLU of the gate, the up
    projection and their product (3 x the SwiGLU width)."""
    per_element = 3 * precision.stream + FP32 + precision.compute
    return tokens * (hidden * per_element + kv_width * 2 * precision.compute + width * 3 * precision.compute)


def block_backward_bytes(elements: int, precision: Precision, mlp_ratio: int) -> int:
    """What a block's backward holds beyond its saved tensors, at its MLP: the gradients of the MLP
    hidden after and before GELU, while the hidden before GELU is still saved, less the one after
    GELU, already released; and the gradient of the block's output."""
    return elements * (mlp_ratio + 1) * precision.compute


def output_saved_bytes(elements: int, precision: Precision) -> int:
    """What the output layer saves for backward: its LayerNorm's float32 input, the normalised
    hidden states (stream dtype) and the projection's input (compute dtype)."""
    return elements * (FP32 + precision.stream + precision.compute)


def activation_bytes(shape: ModelShape, rows: int, seq_len: int, precision: Precision, mode: str, every: int) -> int:
    """Saved activations of a forward over `rows` sequences with activation checkpointing `mode`
    (none, full, or selective: every `every`-th block): a checkpointed block keeps only its input,
    and backward recomputes one block at a time."""
    elements = shape.elements(rows, seq_len)
    saved = shape.block_saved(rows, seq_len, precision)
    checkpointed = {"none": 0, "full": shape.n_layers, "selective": math.ceil(shape.n_layers / every)}[mode]
    blocks = (shape.n_layers - checkpointed) * saved + checkpointed * elements * precision.stream
    recomputed = saved if checkpointed else 0
    return blocks + recomputed + (output_saved_bytes(elements, precision) if shape.has_logits else 0)


def masked_fraction(micro: int, global_batch: int) -> float:
    """The expected masked fraction of the most masked micro-batch: its times are a contiguous
    micro / global of the strata over [0, 1), at most the top ones."""
    return 1.0 - micro / (2 * global_batch)


@dataclass(frozen=True)
class Loss:
    """The loss of `rows` sequences: the logits in the compute dtype, and float32 arrays over the
    scored positions and V data tokens computed from them (`ar`: every position; `mdlm`: the
    masked ones, whose logits are gathered first)."""

    logits: int
    gathered: int  # mdlm: the scored positions' logits, gathered (compute dtype)
    scored: int  # one float32 [scored positions, V] array
    task: str
    compute: int

    @classmethod
    def of(cls, task: str, rows: int, seq_len: int, shape: ModelShape, precision: Precision, fraction: float) -> Loss:
        positions = rows * seq_len
        scored = positions if task == "ar" else int(positions * fraction)
        gathered = 0 if task == "ar" else scored * shape.padded_vocab * precision.compute
        return cls(positions * shape.padded_vocab * precision.compute, gathered, scored * shape.vocab * FP32, task,
                   precision.compute)

    @property
    def cast(self) -> int:
        """The float32 copy of the data columns of the logits: always for ar (log-softmax wants them
        contiguous), for mdlm when the logits are bf16."""
        return self.scored if self.task == "ar" or self.compute < FP32 else 0

    @property
    def forward(self) -> int:
        """At the end of the forward: the logits, the gathered ones, their float32 copy, and the
        log-softmax (ar) or the log-sum-exp's shifted copy (mdlm)."""
        return self.logits + self.gathered + self.cast + self.scored

    @property
    def backward(self) -> int:
        """In backward: what the forward saved (the log-softmax, or the float32 scored logits) and
        the float32 gradients alive at once (ar: the gathered target's and the log-softmax's;
        mdlm: the log-sum-exp's, the gathered target's and their sum)."""
        gradients = 2 if self.task == "ar" else 3
        return (gradients + 1) * self.scored


def gumbel_bytes(rows: int, vocab: int, compute: int) -> int:
    """A float64 Gumbel-max draw over `rows` rows of `vocab` logits, at most
    `MAX_NOISE_ELEMENTS` values at a time (each chunk's logits copied out in their dtype too)."""
    elements = min(rows * vocab, max(vocab, MAX_NOISE_ELEMENTS))
    return elements * (GUMBEL_ARRAYS * FP64 + compute)


def planned_vocab_size(data: DataConfig) -> int:
    """The data vocabulary of `data`, without its corpus where the config fixes it (GPT-2, the
    synthetic corpus, a model folder's tokenizer); a char or word vocabulary is read from the corpus."""
    if data.tokenizer == "gpt2":
        return GPT2_VOCAB_SIZE
    if data.tokenizer == "synthetic":
        return data.synthetic_states + 1
    if data.tokenizer == "hf":
        return run_tokenizer(data).vocab_size
    return build_dataset(data).tokenizer.vocab_size


_MODEL_REMEDY = "lower model.hidden_size or model.n_layers, or shard over more ranks (parallel.dp_shard)"
_BATCH_REMEDY = "lower training.micro_batch_size or data.seq_len"


def training_plan(cfg: TrainProgram, world_size: int, vocab_size: int, device_type: str,
                  sharded: bool | None = None) -> MemoryPlan:
    """The memory plan of training `cfg` on `world_size` ranks of `device_type` ("cpu", "cuda"),
    with FSDP2 when `sharded` (default: more than one rank), for a data vocabulary of `vocab_size`."""
    sharded = world_size > 1 if sharded is None else sharded
    training, par, seq_len = cfg.training, cfg.parallel, cfg.data.seq_len
    shard = mesh_shape(par, world_size)[1] if sharded else 1
    micro = BatchPlan.from_config(training, world_size, 0).micro
    precision = Precision.of(cfg.runtime.mixed_precision, device_type, sharded)
    shape = ModelShape.of(MODEL_KINDS[training.task], cfg.model, vocab_size)
    local = shape.numel(shard) * FP32
    part = f"1/{shard} of each" if shard > 1 else "whole"
    items = [
        MemoryItem(f"parameters (float32, {part})", local, (RESIDENT,), _MODEL_REMEDY),
        MemoryItem("AdamW state (2 x float32)", 2 * local, (RESIDENT,), _MODEL_REMEDY),
    ]
    if training.ema_decay > 0:
        items.append(MemoryItem("EMA weights (float32)", local, (RESIDENT,),
                                "set training.ema_decay = 0, or " + _MODEL_REMEDY))
    items += _compute_weights("", shape, precision, sharded, par.reshard_after_forward)
    rows, denoiser = micro, shape
    if training.task == "nce":
        denoiser = ModelShape.of("dit", cfg.model, vocab_size)
        items.append(MemoryItem(f"frozen denoiser (float32, {part})", denoiser.numel(shard) * FP32, (RESIDENT,),
                                _MODEL_REMEDY))
        items += _compute_weights("frozen denoiser's ", denoiser, precision, sharded, par.reshard_after_forward)
        items += _no_grad_forward("negatives", denoiser, micro, seq_len, precision, "lower training.micro_batch_size",
                                  gumbel_bytes(seq_len, vocab_size, precision.compute))
        rows = (1 + cfg.nce.num_negatives) * micro  # the positives and their negatives in one forward
    for mode in ("none", "full", "selective"):
        label = f"activations, checkpointing {mode}" + (f" every {par.ac_every}" if mode == "selective" else "")
        items.append(MemoryItem(label, activation_bytes(shape, rows, seq_len, precision, mode, par.ac_every),
                                STEP_PHASES if mode == par.activation_checkpoint else (),
                                _BATCH_REMEDY if par.activation_checkpoint == "full" else
                                "set parallel.activation_checkpoint = full, or " + _BATCH_REMEDY))
    if shape.has_logits:
        fraction = masked_fraction(micro, training.global_batch_size)
        loss = Loss.of(training.task, micro, seq_len, shape, precision, fraction)
        items.append(MemoryItem("logits and loss", loss.forward, ("forward",), _BATCH_REMEDY))
        items.append(MemoryItem("loss backward", loss.backward, ("loss backward",), _BATCH_REMEDY))
    items.append(MemoryItem("one block's backward", shape.block_backward(rows, seq_len, precision), ("blocks backward",),
                            _BATCH_REMEDY))
    items.append(MemoryItem("gradients (float32)", local, (*STEP_PHASES[1:], "optimizer step"), _MODEL_REMEDY))
    if sharded:  # reduce-scattered in float32
        unsharded = shape.block_numel * (precision.compute + (FP32 if precision.compute < FP32 else 0))
        items.append(MemoryItem("one block's unsharded gradients", unsharded, ("blocks backward",),
                                "lower model.hidden_size"))
    # AdamW: foreach on CUDA (a temporary as large as the states' shard), one tensor at a time elsewhere
    temporaries = local if device_type == "cuda" else shape.largest_numel * FP32
    items.append(MemoryItem("AdamW step temporaries", temporaries, ("optimizer step",), _MODEL_REMEDY))
    items += _evaluation_items(cfg, shape, denoiser, precision)
    layout = "one process"
    if sharded:
        layout = f"HSDP {par.dp_replicate} x {shard}" if par.dp_replicate > 1 else f"FSDP2 over {shard}"
    setting = (f"{training.task} on {world_size} x {device_type} ({layout}), {precision.name} compute, micro-batch "
               f"{micro} x {seq_len} tokens, vocabulary {vocab_size}")
    return MemoryPlan("training", setting, tuple(items))


def _compute_weights(owner: str, shape: ModelShape, precision: Precision, sharded: bool,
                     reshard: bool) -> list[MemoryItem]:
    """The weights in the compute dtype: FSDP2's gathered root and two blocks (every block when
    they are not resharded after forward), or autocast's bf16 copies in one process."""
    if sharded:
        blocks = 2 if reshard else shape.n_layers
        return [MemoryItem(f"{owner}gathered weights (root + {blocks} blocks)",
                           (shape.root_numel + blocks * shape.block_numel) * precision.compute, (RESIDENT,),
                           "set parallel.reshard_after_forward = true, or lower model.hidden_size")]
    if precision.autocast:
        return [MemoryItem(f"{owner}bf16 weight copies (autocast)", shape.numel() * precision.compute, (RESIDENT,),
                           _MODEL_REMEDY)]
    return []


def _no_grad_forward(phase: str, shape: ModelShape, rows: int, seq_len: int, precision: Precision, remedy: str,
                     after_logits: int) -> list[MemoryItem]:
    """A forward without gradients over `rows` sequences: one block's working set (phase "<phase>
    forward"), then, not at the same time, the logits and the `after_logits` bytes computed from
    them (phase "<phase> logits")."""
    logits = rows * seq_len * shape.padded_vocab * precision.compute
    return [MemoryItem(f"{phase}: one block's forward", shape.block_working(rows, seq_len, precision),
                       (f"{phase} forward",), remedy),
            MemoryItem(f"{phase}: logits and what follows", logits + after_logits, (f"{phase} logits",), remedy)]


def _evaluation_items(cfg: TrainProgram, shape: ModelShape, denoiser: ModelShape,
                      precision: Precision) -> list[MemoryItem]:
    """Training's validation batches and end-of-run samples, without gradients: for mdlm and ar
    the trained model, its logits and its loss or draws; for nce the frozen denoiser's forward and
    draws, then the energy network's forward over the positives and negatives (validation) or
    `nce.max_batch` candidates at a time (samples), the denoiser's logits still held."""
    task, seq_len, vocab = cfg.training.task, cfg.data.seq_len, shape.vocab
    rows, num = cfg.metrics.eval_batch_size, cfg.sample.num_samples
    if task != "nce":
        loss = Loss.of(task, rows, seq_len, shape, precision, 0.5)
        # a step draws the positions it unmasks, L / steps of each sequence (mdlm); or one position
        # of each, from the logits of a forward made while the last step's were still held (ar)
        if task == "ar":
            draws = num * seq_len * shape.padded_vocab * precision.compute + gumbel_bytes(num, vocab, precision.compute)
        else:
            draws = gumbel_bytes(math.ceil(num * seq_len / min(cfg.sample.steps, seq_len)), vocab, precision.compute)
        return [*_no_grad_forward("validation", shape, rows, seq_len, precision, "lower metrics.eval_batch_size",
                                  loss.forward - loss.logits),
                *_no_grad_forward("samples", shape, num, seq_len, precision, "lower sample.num_samples", draws)]
    items = _no_grad_forward("validation negatives", denoiser, rows, seq_len, precision,
                             "lower metrics.eval_batch_size", gumbel_bytes(seq_len, vocab, precision.compute))
    items.append(MemoryItem("validation: energy network's forward", shape.block_working(
        (1 + cfg.nce.num_negatives) * rows, seq_len, precision), ("validation energies",),
        "lower metrics.eval_batch_size"))
    if cfg.nce.ess_candidates:  # the ESS diagnostics score k candidates of a few sequences, max_batch at a time
        sequences = min(cfg.nce.ess_sequences, rows)
        scored = min(cfg.nce.max_batch, cfg.nce.ess_candidates * sequences)
        logits = sequences * seq_len * denoiser.padded_vocab * precision.compute
        items.append(MemoryItem(f"validation: energies of {scored} ESS candidates", logits + shape.block_working(
            scored, seq_len, precision), ("validation ESS",),
            "lower nce.ess_candidates or nce.max_batch"))
    return items + sampling_items(denoiser, shape, num, seq_len, cfg.sample.steps, cfg.sample.num_candidates,
                                  cfg.nce.max_batch, "gumbel", precision, "lower sample.num_samples or nce.max_batch")


def inverse_cdf_bytes(positions: int, candidates: int, vocab: int, compute: int) -> int:
    """The inverse-CDF draw of `candidates` tokens at each of `positions` positions: the float64
    uniforms, and a chunk of at most `MAX_NOISE_ELEMENTS` logits (in their dtype, then float64,
    and their float64 cumulative softmax)."""
    chunk = min(positions * vocab, max(vocab, MAX_NOISE_ELEMENTS))
    return candidates * positions * FP64 + chunk * (compute + 2 * FP64)


def sampling_items(denoiser: ModelShape, energy: ModelShape | None, rows: int, seq_len: int, steps: int,
                   candidates: int, max_batch: int, method: str, precision: Precision, remedy: str) -> list[MemoryItem]:
    """Sampling `rows` sequences: the denoiser's forward, then its logits and a plain step's draw
    (the L / steps positions it unmasks); with an energy, the `candidates` full denoisings of
    every masked position (all of them at the first step) drawn by `method`, then scored by the
    energy `max_batch` at a time (an AR energy: its logits and float32 log-softmax), the
    denoiser's logits held throughout."""
    vocab, compute = denoiser.vocab, precision.compute
    plain = gumbel_bytes(math.ceil(rows * seq_len / min(steps, seq_len)), vocab, compute)
    items = _no_grad_forward("samples", denoiser, rows, seq_len, precision, remedy, plain)
    if energy is None:
        return items
    logits = rows * seq_len * denoiser.padded_vocab * compute
    positions = rows * seq_len
    drawn = candidates * positions
    # the candidates and their float64 log-probabilities per position, the rows and draws (int64)
    # and the draws' float64 log-probabilities
    held = logits + drawn * (INT64 + FP64) + drawn * (2 * INT64 + FP64)
    draw = gumbel_bytes(drawn, vocab, compute) if method == "gumbel" else inverse_cdf_bytes(positions, candidates,
                                                                                            vocab, compute)
    items.append(MemoryItem(f"samples: {candidates} candidates' draw ({method})", held + draw, ("samples candidates",),
                            remedy))
    scored = min(max_batch, rows * candidates)
    scoring = energy.block_working(scored, seq_len, precision)
    if energy.has_logits:
        scoring = max(scoring, Loss.of("ar", scored, seq_len, energy, precision, 1.0).forward)
    items.append(MemoryItem(f"samples: energies of {scored} candidates at a time", held + scoring,
                            ("samples energies",), remedy))
    return items


def sampling_plan(cfg: SampleProgram, denoiser: TrainProgram, vocab_size: int, energy: TrainProgram | None,
                  world_size: int, device_type: str) -> MemoryPlan:
    """The memory plan of `python -m edlm_dist.sample` with `cfg` on `world_size` ranks of
    `device_type`: the MDLM of the run config `denoiser` (data vocabulary `vocab_size`), corrected
    by the energy of the run config `energy` (None: plain MDLM sampling). Every rank holds both
    models whole, their weights float32 or in the compute dtype (`runtime.inference_weights`); in
    candidates mode it draws and scores num_candidates / world size candidates."""
    s = cfg.sample
    compute_weights = cfg.runtime.inference_weights == "compute"
    precision = Precision.of(cfg.runtime.mixed_precision, device_type, sharded=False, compute_weights=compute_weights)
    weight_bytes = precision.compute if compute_weights else FP32
    lower = ", or set runtime.inference_weights = compute" if weight_bytes > precision.compute else ""
    denoiser_shape = ModelShape.of("dit", denoiser.model, vocab_size)
    models = {"denoiser": denoiser_shape}
    remedy, sampler = "lower sample.batch_size", "MDLM"
    energy_shape = None
    if energy is not None:
        # a llama or gpt2 energy states its own token ids (an AR model's tokenizer may lack the
        # denoiser's mask and added ids); a dit one has the data's
        energy_vocab = vocab_size if energy.model.family == "dit" else energy.model.vocab_size
        energy_shape = ModelShape.of(MODEL_KINDS[energy.training.task], energy.model, energy_vocab)
        models[f"energy ({cfg.energy.kind})"] = energy_shape
        remedy += " or energy.max_batch" + (", or set sample.mode = candidates" if world_size > 1 and s.mode == "batch"
                                            else "")
        sampler = f"EDLM, {s.num_candidates} candidates"
    items = []
    for name, shape in models.items():
        items.append(MemoryItem(f"{name} weights ({dtype_name(weight_bytes)})", shape.numel() * weight_bytes,
                                (RESIDENT,), f"use a smaller {name} run{lower}"))
        items += _compute_weights(f"{name} ", shape, precision, False, True)
    candidates = s.num_candidates // world_size if s.mode == "candidates" else s.num_candidates
    items += sampling_items(denoiser_shape, energy_shape, s.batch_size, denoiser.data.seq_len, s.steps, candidates,
                            cfg.energy.max_batch, s.candidate_draw, precision, remedy)
    setting = (f"{sampler} on {world_size} x {device_type} ({s.mode} mode), {precision.name} compute, "
               f"{dtype_name(weight_bytes)} weights, batches of "
               f"{s.batch_size} x {denoiser.data.seq_len} tokens, vocabulary {vocab_size}")
    return MemoryPlan("sampling", setting, tuple(items))
