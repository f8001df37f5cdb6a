"""Global block order of pre-tokenised corpora: coverage, exact and resharded resume, epochs,
state checks."""

from __future__ import annotations

import pickle
import sys
from itertools import islice

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from edlm_dist.data.errors import DataError
from edlm_dist.data.batches import BatchPlan
from edlm_dist.data.packed import PackedBlocks, build_loader

EOS = 10_000
SEQ_LEN = 10  # 8 stream tokens per block
GLOBAL_BATCH = 8


class ArangeCorpus:
    """In-memory stand-in for `TokenCorpus`: document tokens are the distinct ids 0, 1, 2, ...,
    so every token of the stream (but EOS) says where it came from."""

    def __init__(self, doc_lengths: list[int], fingerprint: str = "arange") -> None:
        bounds = np.cumsum([0, *doc_lengths])
        self.docs = [np.arange(a, b, dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:])]
        self.stream = np.concatenate([np.append(d, EOS) for d in self.docs])
        self.length, self.documents = len(self.stream), len(self.docs)
        self.eos_id, self.vocab_size, self.fingerprint = EOS, EOS + 1, fingerprint

    def read(self, start: int, stop: int) -> np.ndarray:
        assert 0 <= start <= stop <= self.length
        return self.stream[start:stop].copy()


def corpus_of_length(length: int, seed: int = 0, **kwargs) -> ArangeCorpus:
    """Documents of 1..30 tokens (the last one shorter, maybe empty) whose stream, EOS included,
    has exactly `length` tokens."""
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < length:
        n = min(int(rng.integers(1, 31)), length - total - 1)
        lengths.append(max(n, 0))
        total += lengths[-1] + 1
    return ArangeCorpus(lengths, **kwargs)


# 64 blocks (S = 8 steps of 8 blocks) and a tail of 3 tokens that no block reads.
NUM_BLOCKS = 64
STEPS = NUM_BLOCKS // GLOBAL_BATCH


@pytest.fixture(scope="module")
def corpus() -> ArangeCorpus:
    return corpus_of_length(NUM_BLOCKS * (SEQ_LEN - 2) + 3)


def expected_blocks(corpus: ArangeCorpus) -> list[tuple[int, ...]]:
    span = SEQ_LEN - 2
    return sorted(tuple(corpus.stream[k * span : (k + 1) * span]) for k in range(corpus.length // span))


def interiors(rows: list[torch.Tensor]) -> list[tuple[int, ...]]:
    """The stream slices of blocks, checking their EOS frame."""
    batch = torch.cat(rows)
    assert (batch[:, 0] == EOS).all() and (batch[:, -1] == EOS).all()
    return sorted(tuple(row[1:-1].tolist()) for row in batch)


def take(dataset: PackedBlocks, steps: int, num_workers: int) -> list[torch.Tensor]:
    return list(islice(iter(build_loader(dataset, num_workers)), steps))


def ranks(corpus: ArangeCorpus, world_size: int, **kwargs) -> list[PackedBlocks]:
    return [
        PackedBlocks(corpus, seq_len=SEQ_LEN, plan=BatchPlan(GLOBAL_BATCH, world_size, r), **kwargs)
        for r in range(world_size)
    ]


def test_epoch_covers_every_block_once_across_ranks_and_workers(corpus: ArangeCorpus) -> None:
    reference = ranks(corpus, 1, seed=3)[0]
    assert (reference.num_blocks, reference.steps_per_epoch) == (NUM_BLOCKS, STEPS)
    per_rank = [take(ds, STEPS, num_workers=2) for ds in ranks(corpus, 2, seed=3)]
    for step in range(STEPS):
        assert torch.equal(torch.cat([batches[step] for batches in per_rank]), reference.batch(step))
    assert all(b.shape == (GLOBAL_BATCH // 2, SEQ_LEN) and b.dtype == torch.long for bs in per_rank for b in bs)
    blocks = interiors([b for batches in per_rank for b in batches])
    assert blocks == expected_blocks(corpus)
    tokens = np.concatenate(blocks)
    tokens = tokens[tokens != EOS]
    covered = corpus.stream[: NUM_BLOCKS * (SEQ_LEN - 2)]
    assert len(tokens) == len(set(tokens.tolist())) and set(tokens.tolist()) == set(covered[covered != EOS].tolist())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_per_rank(corpus: ArangeCorpus, num_workers: int) -> None:
    k, total = 5, STEPS + 4  # the resumed part crosses into epoch 1
    for rank in range(2):
        full = take(ranks(corpus, 2, seed=1)[rank], total, num_workers)
        first = ranks(corpus, 2, seed=1)[rank]
        assert [torch.equal(a, b) for a, b in zip(take(first, k, num_workers), full)] == [True] * k
        # The trainer counts the batches it consumed: the main-process copy is not advanced by workers.
        state = {**first.state_dict(), "step": k}
        if num_workers == 0:
            assert first.state_dict() == state
        resumed = ranks(corpus, 2, seed=1)[rank]
        resumed.load_state_dict(state)
        rest = take(resumed, total - k, num_workers)
        assert all(torch.equal(a, b) for a, b in zip(rest, full[k:], strict=True))


def test_stateful_dataloader_resumes_its_workers(corpus: ArangeCorpus) -> None:
    """The loader's own (layout-specific) state also resumes exactly, at any cut."""
    pytest.importorskip("torchdata.stateful_dataloader")
    full = take(ranks(corpus, 1)[0], 12, num_workers=2)
    for k in (3, 4):
        loader = build_loader(ranks(corpus, 1)[0], num_workers=2)
        batches = iter(loader)
        head = list(islice(batches, k))
        state = loader.state_dict()
        del batches
        again = build_loader(ranks(corpus, 1)[0], num_workers=2)
        again.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(head + list(islice(iter(again), 12 - k)), full, strict=True))


@pytest.mark.parametrize("world_size", [1, 4])
def test_reshard_resume(corpus: ArangeCorpus, world_size: int) -> None:
    k = 3
    before = ranks(corpus, 2, seed=7)
    rows = [b for ds in before for b in take(ds, k, num_workers=2)]
    state = {**before[0].state_dict(), "step": k}
    after = ranks(corpus, world_size, seed=7)
    for ds in after:
        ds.load_state_dict(state)
    per_rank = [take(ds, STEPS - k, num_workers=1) for ds in after]
    reference = ranks(corpus, 1, seed=7)[0]
    for i in range(STEPS - k):
        assert torch.equal(torch.cat([batches[i] for batches in per_rank]), reference.batch(k + i))
    assert interiors(rows + [b for batches in per_rank for b in batches]) == expected_blocks(corpus)


def test_epochs_are_new_permutations_keyed_by_seed(corpus: ArangeCorpus) -> None:
    ds, same, other = (ranks(corpus, 1, seed=s)[0] for s in (0, 0, 1))
    orders = [ds.epoch_order(e) for e in range(3)]
    assert all(sorted(o.tolist()) == list(range(NUM_BLOCKS)) for o in orders)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    span = SEQ_LEN - 2
    assert [tuple(r[1:-1].tolist()) for r in ds.batch(STEPS)] == [
        tuple(corpus.stream[b * span : (b + 1) * span]) for b in orders[1][:GLOBAL_BATCH]
    ]
    streamed = take(ranks(corpus, 1, seed=0)[0], 2 * STEPS, num_workers=0)
    assert all(torch.equal(streamed[g], same.batch(g)) for g in range(2 * STEPS))
    assert not torch.equal(ds.batch(0), other.batch(0)) and not torch.equal(ds.batch(STEPS), other.batch(STEPS))
    assert interiors(streamed[STEPS:]) == expected_blocks(corpus)


def test_state_checks(corpus: ArangeCorpus) -> None:
    state = ranks(corpus, 1, start_step=4)[0].state_dict()
    assert state == {"step": 4, "seed": 0, "seq_len": SEQ_LEN, "global_batch": GLOBAL_BATCH, "fingerprint": "arange"}
    other = corpus_of_length(corpus.length, fingerprint="other")
    with pytest.raises(DataError, match="arange.*other"):
        PackedBlocks(other, seq_len=SEQ_LEN, plan=BatchPlan(GLOBAL_BATCH)).load_state_dict(state)
    lenient = PackedBlocks(other, seq_len=SEQ_LEN, plan=BatchPlan(GLOBAL_BATCH), allow_fingerprint_mismatch=True)
    lenient.load_state_dict(state)
    assert lenient.state_dict()["step"] == 4
    for key, changed in (("seq_len", {"seq_len": 12}), ("global_batch", {"global_batch": 4}), ("seed", {"seed": 2})):
        kwargs = {"seq_len": SEQ_LEN, "global_batch": GLOBAL_BATCH, **changed}
        with pytest.raises(DataError, match=f"{key} = {state[key]}.*{key} = {changed[key]}"):
            PackedBlocks(corpus, seq_len=kwargs["seq_len"], plan=BatchPlan(kwargs["global_batch"]),
                         seed=kwargs.get("seed", 0)).load_state_dict(state)


def test_bad_sizes_and_pickling(corpus: ArangeCorpus) -> None:
    with pytest.raises(DataError, match="too small"):
        PackedBlocks(corpus, seq_len=SEQ_LEN, plan=BatchPlan(NUM_BLOCKS + 1))
    with pytest.raises(DataError, match="ranks"):
        PackedBlocks(corpus, seq_len=SEQ_LEN, plan=BatchPlan(GLOBAL_BATCH, world_size=3, rank=0))
    ds = ranks(corpus, 2)[1]
    ds.batch(0)  # caches epoch 0's order, which a pickled copy leaves out
    assert torch.equal(pickle.loads(pickle.dumps(ds)).batch(STEPS + 1), ds.batch(STEPS + 1))


def test_loader_without_torchdata(corpus: ArangeCorpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where torchdata is absent (it is optional on older torch) a plain DataLoader serves."""
    monkeypatch.setitem(sys.modules, "torchdata.stateful_dataloader", None)
    loader = build_loader(ranks(corpus, 1, start_step=2)[0], num_workers=2)
    assert type(loader) is DataLoader
    reference = ranks(corpus, 1)[0]
    assert all(torch.equal(b, reference.batch(2 + i)) for i, b in enumerate(islice(iter(loader), 5)))


def test_real_token_corpus(tmp_path) -> None:
    """The readers on a corpus written by `CorpusWriter` (several shards, read by two workers)
    give what they give on the stand-in holding the same stream."""
    from edlm_dist.data.corpus_reader import TokenCorpus
    from edlm_dist.data.corpus_writer import write_corpus
    from edlm_dist.data.tokenizers import CharTokenizer

    stand_in = corpus_of_length(NUM_BLOCKS * (SEQ_LEN - 2) + 3)
    chars = [chr(0x4E00 + i) for i in range(EOS)]  # EOS is then the tokenizer's eos_id
    texts = ["".join(chars[i] for i in doc) for doc in stand_in.docs]
    write_corpus(str(tmp_path), CharTokenizer(chars), {"train": texts, "val": texts[:2]}, shard_tokens=100)
    corpus = TokenCorpus(str(tmp_path), "train")
    assert corpus.eos_id == EOS and corpus.length == stand_in.length
    reference = ranks(stand_in, 2, seed=5)
    for rank, ds in enumerate(ranks(corpus, 2, seed=5)):
        for step, batch in enumerate(take(ds, STEPS + 2, num_workers=2)):
            assert torch.equal(batch, reference[rank].batch(step))
    assert np.array_equal(corpus.read(0, corpus.length), stand_in.read(0, stand_in.length))
    assert corpus.documents == stand_in.documents
    assert all(np.array_equal(corpus.document(i), doc) for i, doc in enumerate(stand_in.docs))


def test_a_damaged_shard_stops_the_stream_before_any_batch_holds_its_tokens(tmp_path) -> None:
    """With a token of one shard damaged on disk, every batch before the first that would read it is
    exact, and that one is a DataError naming the shard and the damaged tokens, also through workers."""
    from edlm_dist.data.corpus_reader import TokenCorpus
    from edlm_dist.data.corpus_writer import write_corpus
    from edlm_dist.data.loaders import next_from_workers
    from edlm_dist.data.tokenizers import CharTokenizer

    stand_in = corpus_of_length(NUM_BLOCKS * (SEQ_LEN - 2) + 3)
    chars = [chr(0x4E00 + i) for i in range(EOS)]
    write_corpus(str(tmp_path), CharTokenizer(chars), {"train": ["".join(chars[i] for i in d) for d in stand_in.docs],
                                                       "val": [chars[0]]}, shard_tokens=100)
    corpus = TokenCorpus(str(tmp_path), "train")
    damaged_shard = 0  # with seed 3, step 0 reads none of it, step 1 does
    shard = corpus.manifest.splits["train"]["token_shards"][damaged_shard]
    begin = sum(s["tokens"] for s in corpus.manifest.splits["train"]["token_shards"][:damaged_shard])
    with open(tmp_path / shard["path"], "r+b") as f:
        f.seek(2 * 7)
        f.write(np.array([1], "<u2").tobytes())  # an id in the vocabulary: only its check tells
    reference, damaged = ranks(stand_in, 1, seed=3)[0], ranks(corpus, 1, seed=3)[0]
    order = reference.epoch_order(0).reshape(STEPS, GLOBAL_BATCH)
    overlaps = (order * (SEQ_LEN - 2) < begin + shard["tokens"]) & ((order + 1) * (SEQ_LEN - 2) > begin)
    first_bad = int(np.flatnonzero(overlaps.any(axis=1))[0])
    assert first_bad > 0
    batches = iter(build_loader(damaged, num_workers=2))
    for step in range(first_bad):
        assert torch.equal(next_from_workers(batches), reference.batch(step))
    with pytest.raises(DataError) as info:
        next_from_workers(batches)
    assert str(info.value) == (f"{tmp_path}/{shard['path']}: token offsets 0-{shard['tokens']} (bytes 0-"
                               f"{2 * shard['tokens']}) do not match their CRC-32 in {tmp_path}/{shard['checks']}")
