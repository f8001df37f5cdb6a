"""Typed configuration sections: the single source of truth for every knob a program has.

Each TOML section maps to one dataclass below, and each program has one root holding the sections
it reads (`TrainProgram`, `SampleProgram`, `EvalProgram`): a section shared by programs, and so
each of its keys, means the same in all of them. Field types are enforced by the loader
(`Literal` fields list their allowed values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal


@dataclass
class JobConfig:
    """What every program keys its randomness by, and a note for the record."""

    seed: int = 0
    description: str = ""


@dataclass
class RunJobConfig(JobConfig):
    """Training's [job] also names the run: its folder is <dump_folder>/<name>. That folder is the
    one name of a run everywhere: sampling and evaluation read runs by it (--checkpoint, the
    energy's runs) and write their results inside it, or to --out."""

    name: str = "run"
    dump_folder: str = "runs"


@dataclass
class RuntimeConfig:
    """Where and how a program runs: the same for training, sampling and evaluation."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16: FSDP2 bf16 compute with fp32 master weights and gradient reduction, or bf16 autocast
    # in one process, on any device; auto: bf16 on CUDA, fp32 on a CPU (where bf16 is slower)
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    collective_timeout_s: int = 600  # a collective waiting longer than this fails the program


@dataclass
class ReaderRuntimeConfig(RuntimeConfig):
    """Sampling's and evaluation's [runtime] also says in which dtype the models they only read (the
    denoiser, the energy's network) hold their weights: "float32", or "compute", the compute dtype
    of `mixed_precision` (bf16 on CUDA by default), which halves their memory and drops autocast's
    bf16 copies; the residual stream is then bf16 as in FSDP2 training, and what is float32 or
    float64 today (the energy head, log-softmax, the diffusion math, the Gen PPL oracle) stays so."""

    inference_weights: Literal["float32", "compute"] = "float32"


@dataclass
class ModelConfig:
    """The architecture, complete: a run folder's [model] rebuilds its model exactly.

    `family` picks the architecture (docs/hf_models.md): "dit" is MDLM's DiT (its causal AR and
    the NCE energy network share the backbone); "llama" the Llama-family decoder (RMSNorm, RoPE,
    SwiGLU, grouped-query attention: bidirectional for LLaDA and Dream, causal for Llama and
    Qwen2); "gpt2" GPT-2 (causal only). The keys after `start_token` are read by the llama and
    gpt2 families only (tools/import_hf.py writes them from a checkpoint's config.json); the dit
    family keeps them at their defaults.
    """

    family: Literal["dit", "llama", "gpt2"] = "dit"
    preset: Literal["", "tiny", "small"] = ""  # fills the size fields not set explicitly
    n_layers: int = 4
    hidden_size: int = 128
    n_heads: int = 4
    cond_dim: int = 64  # dit only
    mlp_ratio: int = 4  # the MLP width in hidden sizes when intermediate_size is 0
    dropout: float = 0.1  # on the residual branches (and gpt2's embeddings) in training
    time_conditioning: bool = False  # dit only
    # ar: the id read before the first token; -1 = the mask id (absent from data). MDLM's AR
    # reads BOS (50256 for GPT-2), which tools/import_mdlm.py sets; tools/import_hf.py sets the
    # checkpoint's bos_token_id
    start_token: int = -1
    # the tokenizer's ids are 0..vocab_size-1 (the mask id among them when mask_id says so); the
    # dit family takes it from the data's tokenizer (0 here)
    vocab_size: int = 0
    # the mask token's id: LLaDA's 126336 and Dream's 151666 lie inside the vocabulary; -1 = the
    # id right after it (vocab_size, MDLM's convention, then a row of the embedding)
    mask_id: int = -1
    embedding_rows: int = 0  # input embedding and output layer rows; 0 = vocab_size + 1 rounded up to 64
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = n_heads
    intermediate_size: int = 0  # the MLP's hidden width; 0 = mlp_ratio * hidden_size
    norm_eps: float = 1e-5  # RMSNorm (llama) or LayerNorm (gpt2) epsilon
    rope_theta: float = 10000.0  # the rotary base
    # "llama3": Llama 3.1's frequency rescaling by the four rope_* keys below
    rope_scaling: Literal["none", "llama3"] = "none"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2, Dream)
    tie_embeddings: bool = False  # the output layer is the input embedding (gpt2's default)
    # Dream's convention: the logit at position i is computed from position i - 1's hidden state
    # (position 0 keeps its own)
    logit_shift: bool = False
    max_positions: int = 1024  # gpt2: rows of the learned position embedding


VOCAB_MULTIPLE = 64


def padded_vocab_size(vocab_size: int) -> int:
    """Rows of an output layer by default: `vocab_size` tokens + the mask token, rounded up to a
    multiple of 64 (for speed; the extra rows are padding)."""
    return -(-(vocab_size + 1) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layers": 4, "hidden_size": 128, "n_heads": 4, "cond_dim": 64},
    "small": {"n_layers": 12, "hidden_size": 768, "n_heads": 12, "cond_dim": 128},
}


@dataclass
class DiffusionConfig:
    schedule: Literal["loglinear", "cosine"] = "loglinear"
    eps: float = 1e-3  # alpha(1) = eps
    t_min: float = 1e-3  # the NELBO integral runs over [t_min, 1]


@dataclass
class DataConfig:
    # a name of edlm_dist.data.DATASETS: synthetic (the embedded Markov corpus); text (one UTF-8
    # file, data.path, held in memory); files / openwebtext (a corpus prepared by
    # tools/prepare_data.py: data.path, a folder or URL); wikitext2, ptb, tiny_shakespeare, text8
    # (the files under $EDLM_DATA_DIR or data.path)
    dataset: str = "synthetic"
    seq_len: int = 64
    # hf: a Hugging Face model folder's tokenizer (tokenizer.json, its special and mask tokens, chat template)
    tokenizer: Literal["synthetic", "gpt2", "hf", "char", "word"] = "synthetic"
    # gpt2: folder with GPT-2 BPE files (empty = $EDLM_DATA_DIR/gpt2_tokenizer or tiktoken's cache);
    # hf: the model folder (a prepared corpus's manifest names one where this is empty)
    tokenizer_path: str = ""
    path: str = ""  # the file (text) or prepared corpus folder (files, openwebtext); empty = the dataset's default
    format: Literal["auto", "tokens", "raw"] = "auto"  # prepared corpora: pre-tokenised shards or raw .jsonl.zst
    num_workers: int = 0  # dataloader worker processes per rank (streamed corpora)
    shuffle_buffer: int = 1000  # raw-text streaming: blocks in the shuffle buffer
    on_error: Literal["raise", "skip"] = "raise"  # bad records: stop naming the file, or skip and count them
    allow_fingerprint_mismatch: bool = False  # resume on different data than the checkpoint saw
    # prepared corpora: check every shard against the sha256 of its manifest once per run, before
    # the first step (a run remembers the shards it has checked, by size and modification time);
    # false leaves the checks to the reads (damage then stops the run when it is reached)
    verify_shards: bool = True
    val_fraction: float = 0.05  # tail of a text file held out for validation
    synthetic_states: int = 48
    synthetic_branching: int = 3
    synthetic_concentration: float = 0.5
    seed: int = 1234  # seeds the synthetic source and the order of training blocks


@dataclass
class TrainingConfig:
    task: Literal["mdlm", "ar", "nce"] = "mdlm"  # nce: fine-tune the EDLM energy (see [nce])
    steps: int = 1000
    global_batch_size: int = 64
    micro_batch_size: int = 0  # per rank; 0 = no gradient accumulation
    max_grad_norm: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.9999  # 0 disables EMA
    # a step whose update made the model, optimizer state or EMA non-finite: "rollback" reloads the
    # last committed checkpoint and replays to that step, skipping its batch; "stop" ends the run with
    # the failed marker. Nothing non-finite is ever committed
    on_nonfinite: Literal["rollback", "stop"] = "rollback"
    # consecutive skipped batches (a non-finite loss or gradient norm, or an update rolled back)
    # before the run stops
    max_bad_steps: int = 5
    # continued training: a run (or one of its step_<8-digit step> folders) of the same task whose
    # weights (EMA when it has them) start this run, e.g. an imported MDLM, LLaDA or Dream; its [model]
    # is this run's (all but dropout). Read only when the run starts afresh: a resume reads its own
    init_from: str = ""


@dataclass
class ParallelConfig:
    dp_replicate: int = 1  # HSDP replicas (1 = plain FSDP)
    dp_shard: int = -1  # ranks sharding each replica; -1 = all ranks not used by dp_replicate
    activation_checkpoint: Literal["none", "full", "selective"] = "none"
    ac_every: int = 2  # "selective": checkpoint every n-th block
    compile: bool = False  # torch.compile each block
    reshard_after_forward: bool = True  # FSDP2: free gathered params after forward (ZeRO-3)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 2500
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio


@dataclass
class CheckpointConfig:
    enable: bool = True
    interval: int = 1000
    keep_last: int = 2
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0 = none)
    folder: str = "checkpoints"  # inside the run folder, or any fsspec URL (s3://..., gs://...)
    async_save: bool = False  # write in the background while training goes on


@dataclass
class ProgressConfig:
    """How every program shows and records its work."""

    tensorboard: bool = True
    progress: bool = True  # tqdm progress bars


@dataclass
class MetricsConfig(ProgressConfig):
    """Training's [metrics] also sets how often it logs and validates."""

    log_interval: int = 10
    eval_interval: int = 500
    eval_batches: int = 8
    eval_batch_size: int = 64


@dataclass
class NCEConfig:
    """Training task `nce`: the EDLM energy network, fine-tuned from `denoiser` (an MDLM run, or a
    step_<8-digit step> folder), which is also the frozen proposal that draws the negatives. The
    NCE run takes the denoiser's architecture, reading only `model.dropout` from its own [model]."""

    denoiser: str = ""
    weights: Literal["auto", "ema", "model"] = "auto"  # of the denoiser (auto: EMA weights when it has them)
    time_conditioning: bool = False  # whether the energy network reads t
    num_negatives: int = 1  # negatives per positive (the paper uses one)
    max_batch: int = 256  # sequences per energy forward when scoring many candidates
    ess_candidates: int = 16  # diagnostics: candidates per sequence for the effective sample size (0 = off)
    ess_sequences: int = 8  # diagnostics: validation sequences scored at each of the fixed ESS times


@dataclass
class EnergyConfig:
    """The EDLM residual energy that sampling and evaluation correct an MDLM with: `kind` built from
    `checkpoint` (the AR run for ar/coar, the NCE run for nce; a run or a step_<8-digit step>
    folder). The MDLM it corrects is the run each program reads (its --checkpoint)."""

    kind: Literal["nce", "ar", "coar"] = "nce"
    checkpoint: str = ""
    weights: Literal["auto", "ema", "model"] = "auto"  # auto: EMA weights when the checkpoint has them
    max_batch: int = 256  # sequences per energy forward when scoring many candidates


@dataclass
class SampleConfig:
    """Generation: the end-of-run samples of training, and `python -m edlm_dist.sample`, which
    samples the MDLM of `checkpoint` (--checkpoint), corrected by the energy of [energy] when
    `num_candidates` > 1."""

    # the MDLM run (or a step_<8-digit step> folder) sampled from (--checkpoint); empty with an NCE
    # energy: the MDLM that energy was trained against
    checkpoint: str = ""
    num_samples: int = 4
    steps: int = 64
    num_candidates: int = 4  # EDLM importance sampling: candidates per step (1 = plain MDLM)
    window: float = 1.0  # importance sampling while t >= 1 - window
    # batch: each rank generates its own sequences; candidates: every rank works on the same
    # sequences, drawing and scoring num_candidates / world size candidates each
    mode: Literal["batch", "candidates"] = "batch"
    batch_size: int = 16  # sequences per denoiser forward
    prompts: str = ""  # a UTF-8 file, one prompt per line: sample i continues prompt i mod the number of prompts
    # each prompt line is a user's message, rendered by the tokenizer's chat template with the
    # assistant's turn opened (an Instruct model's: data.tokenizer = "hf" with a chat template)
    chat: bool = False
    oracle: str = ""  # Gen PPL judge: an `ar` run of this project, or hf:<name or path> (empty: no Gen PPL)
    reference: bool = True  # also score as many held-out sequences with the oracle (the reference row)
    compile: bool = False  # torch.compile the denoiser and the energy network
    # how the k candidates are drawn, both exact in float64: Gumbel-max (k x positions x vocabulary
    # noise) or the inverse CDF (one uniform per token; much cheaper for large k and vocabularies)
    candidate_draw: Literal["gumbel", "inverse_cdf"] = "gumbel"
    # the folder of samples.jsonl, summary.json and TensorBoard (--out); empty = a folder named
    # after the settings under <denoiser run>/samples/
    output: str = ""


@dataclass
class EvalConfig:
    """Likelihood evaluation, `python -m edlm_dist.eval`: each checkpoint is scored as the model its
    run trained (mdlm: NELBO; ar: exact NLL; nce: EDLM with its denoiser), and an mdlm one as EDLM
    when `energy.checkpoint` names an energy (kind ar, coar or nce). See docs/evaluation.md."""

    checkpoint: str = ""  # comma-separated runs or step_<8-digit step> folders (--checkpoint)
    # the MDLM an nce run's energy corrects when scored (empty: the one it was trained against)
    denoiser: str = ""
    watch: str = ""  # a training run folder: evaluate each checkpoint it commits (--watch)
    # comma-separated sets: wikitext2, ptb, lambada (:val or :test), openwebtext, files (=folder or
    # URL of a prepared corpus), val (the evaluated run's own validation split)
    datasets: str = "val"
    num_sequences: int = 0  # the first blocks of each set (0 = all)
    batch_size: int = 16  # sequences per forward; the noise of a batch is keyed by (seed, batch)
    num_samples: int = 1  # (t, mask) draws per sequence
    num_proposals: int = 8  # EDLM: n proposal draws per estimate; also reported at 2n
    # coAR: also the truncated bound on draws from the coAR joint itself ("joint": the AR model
    # run left to right, much tighter; one AR forward per masked position, so when affordable)
    coar_joint: bool = False
    # how ranks share EDLM work: different sequences, or the same sequences with n / world size
    # proposals each (large n; the figures then also depend on the world size)
    split: Literal["sequences", "proposals"] = "sequences"
    weights: Literal["auto", "ema", "model"] = "auto"  # of the evaluated checkpoints (auto: EMA when present)
    output: str = ""  # results (JSON, TensorBoard) under <output>/<run folder name> (--out); empty = <run>/eval
    poll_interval_s: float = 60.0  # --watch: seconds between looks at the checkpoint folder


@dataclass
class DebugConfig:
    deterministic: bool = False  # bit-reproducible kernels (slower)
    step_sleep_s: float = 0.0  # sleep after every step (gives a test time to send signals)
    # fault injection for tests and drills (docs/operations.md), fired once per run folder:
    # "sigkill" / "sigterm" / "stall" hit rank fault_rank in the middle of step fault_step;
    # "sigstop" freezes it as it enters that step's loss all-reduce; "nonfinite_update" writes NaN
    # into its shard of the first parameter after that step's update;
    # "sigkill_in_checkpoint" / "disk_full" (ENOSPC) / "write_refused" (EACCES) hit its shard
    # write of the checkpoint of step fault_step
    fault: Literal["none", "sigkill", "sigterm", "stall", "sigstop", "nonfinite_update", "sigkill_in_checkpoint",
                   "disk_full", "write_refused"] = "none"
    fault_step: int = 1
    fault_rank: int = 0
    stall_s: float = 60.0  # "stall": how long the rank sleeps


@dataclass
class TrainProgram:
    """The config of `python -m edlm_dist.train`, and the config.toml of every run folder."""

    PROGRAM: ClassVar[str] = "edlm_dist.train"
    job: RunJobConfig = field(default_factory=RunJobConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    nce: NCEConfig = field(default_factory=NCEConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


@dataclass
class _EnergyReader:
    """The sections that sampling and evaluation share: they read trained runs, an MDLM
    corrected by the energy of [energy]."""

    job: JobConfig = field(default_factory=JobConfig)
    runtime: ReaderRuntimeConfig = field(default_factory=ReaderRuntimeConfig)
    metrics: ProgressConfig = field(default_factory=ProgressConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)


@dataclass
class SampleProgram(_EnergyReader):
    """The config of `python -m edlm_dist.sample`."""

    PROGRAM: ClassVar[str] = "edlm_dist.sample"
    sample: SampleConfig = field(default_factory=SampleConfig)


@dataclass
class EvalProgram(_EnergyReader):
    """The config of `python -m edlm_dist.eval`."""

    PROGRAM: ClassVar[str] = "edlm_dist.eval"
    eval: EvalConfig = field(default_factory=EvalConfig)


Program = TrainProgram | SampleProgram | EvalProgram
PROGRAMS: tuple[type[Program], ...] = (TrainProgram, SampleProgram, EvalProgram)

# Keys of the single config that served every program before each had its own root, and of
# energy.denoiser (the run --checkpoint names in sampling, now sample.checkpoint): where each went.
# A file or command line that gives one is read as the first of its new keys that its program has.
MOVED_KEYS: dict[str, tuple[str, ...]] = {
    "training.device": ("runtime.device",),
    "training.mixed_precision": ("runtime.mixed_precision",),
    "parallel.backend": ("runtime.backend",),
    "parallel.collective_timeout_s": ("runtime.collective_timeout_s",),
    "energy.denoiser": ("nce.denoiser", "sample.checkpoint", "eval.denoiser"),
    **{f"energy.{key}": (f"nce.{key}",) for key in ("weights", "time_conditioning", "num_negatives", "max_batch",
                                                    "ess_candidates", "ess_sequences")},
}
# Keys of one program that another answers with a key of its own: a training run's folder name
# (job.name, job.dump_folder) is, for sampling and evaluation, the folder of their results.
INSTEAD: dict[tuple[str, str], str] = {
    (program, f"job.{key}"): f"{section}.output (--out)"
    for program, section in (("edlm_dist.sample", "sample"), ("edlm_dist.eval", "eval"))
    for key in ("name", "dump_folder")
}
# What the config.toml of a run folder written before then holds that training never read: dropped.
UNREAD_BY_TRAINING = ("energy.kind", "energy.checkpoint", "eval.*")
