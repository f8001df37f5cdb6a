"""Raw text shards (`.txt`, `.jsonl`, `.jsonl.zst`, ...) tokenised on the fly into MDLM blocks.

For corpora that were not pre-tokenised: each reading slot (rank x dataloader worker) streams
its documents, tokenises them, and packs them the MDLM way: the slot's token stream is its
documents, each followed by EOS, cut into blocks `[EOS] + next (seq_len - 2) tokens + [EOS]`.
Blocks then pass through a shuffle buffer, since neighbouring blocks come from one document.

Resuming: at the same layout (ranks, workers, seq_len, files) a slot's saved state (position,
packer leftover, shuffle buffer, generator) continues exactly. At another layout,
`merge_states` turns all slots' states into a document-level position that any layout can load;
it never loses a document, and re-reads at most the documents "in flight" at the save: for
each slot, those from the oldest document with tokens still in the packer or shuffle buffer up
to the read position (some of them were emitted in full; the merged form, one number per
file, cannot express the gaps).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from edlm_dist.data.batches import Batch, BatchPlan
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.loaders import TrainLoader, check_fingerprint, next_from_workers, worker_slot
from edlm_dist.data.sources import iter_documents
from edlm_dist.data.tokenizers import Tokenizer
from edlm_dist.diffusion.noise import keyed_generator

log = logging.getLogger("edlm_dist.data")

STATE_VERSION = 1


def _relative_names(files: list[str]) -> list[str]:
    """The paths (or URLs) of `files` relative to their common folder: what states refer to, so a
    corpus moved to another folder still resumes."""
    prefix = os.path.commonprefix(files)
    prefix = prefix[: prefix.rfind("/") + 1]
    return [f[len(prefix):] for f in files]


def files_fingerprint(files: list[str]) -> str:
    """Short hash of the file list (relative names, in order)."""
    return hashlib.sha256("\n".join(_relative_names(files)).encode()).hexdigest()[:16]


def _own_count(start: int, stop: int, stride: int, offset: int) -> int:
    """How many i in [start, stop) have i % stride == offset."""
    def below(x: int) -> int:
        return max(0, (x - offset + stride - 1) // stride)

    return max(0, below(stop) - below(start))


class RawTextBlocks(IterableDataset):
    """Blocks (LongTensor [seq_len]) of raw text files tokenised on the fly; endless unless
    `max_epochs` is set (then each slot pads its last partial block with EOS and drains its
    shuffle buffer).

    Sharding: slot j of J = world_size * num_workers (rank r, worker w: j = r * num_workers + w).
    Each epoch e orders the files by a permutation drawn from (seed, e). With at least J files,
    slot j reads the files at positions j, j + J, j + 2J, ... of that order ("file mode"); with
    fewer files than slots, every slot reads every file and keeps the documents whose index in
    the file is j mod J ("document mode"). Either way no document is read by two slots and none
    is left out. Blocks pass a reservoir of `shuffle_buffer` blocks (fill it, then emit a random
    element and put the new block in its place) drawn from keyed_generator(seed, "raw_shuffle",
    epoch, j).

    State (`state_dict`, per slot, taken inside each worker by torchdata's StatefulDataLoader):
    the position (epoch, file, documents read), the packer's leftover tokens, the shuffle buffer,
    the generator and the layout (world size, workers, seq_len, shuffle_buffer, file list
    fingerprint); loading it resumes exactly, at the same layout only. The layout-free form made
    by `merge_states` resumes at document granularity at any layout.
    A copy of the dataset (a worker) starts from the last loaded state (or the beginning); a new
    `iter()` in the same process continues the same stream.

    Skipped bad records (on_error="skip") are counted in `self.skipped` of the process that
    reads them: the dataset itself with num_workers=0; each worker's copy otherwise, whose count
    is also saved in its state ("skipped"). In document mode only slot 0's residue class counts,
    since every slot parses every record.
    """

    def __init__(
        self,
        files: list[str],
        tokenizer: Tokenizer,
        *,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        text_key: str = "text",
        txt_mode: str = "file",
        on_error: str = "raise",
        max_epochs: int | None = None,
    ) -> None:
        if not files:
            raise DataError("no raw text files to read")
        if len(set(files)) != len(files):
            raise DataError("the raw text file list names a file twice")
        if seq_len < 3:
            raise ValueError(f"seq_len = {seq_len}: a block needs at least BOS, one token and EOS")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size = {world_size})")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer = {shuffle_buffer} < 1")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.files, self.names = list(files), _relative_names(list(files))
        self.fingerprint = files_fingerprint(self.files)
        self.tokenizer, self.seq_len, self.rank, self.world_size = tokenizer, seq_len, rank, world_size
        self.seed, self.shuffle_buffer, self.max_epochs = seed, shuffle_buffer, max_epochs
        self.read_options = {"text_key": text_key, "txt_mode": txt_mode, "on_error": on_error}
        self.skipped = SkipCounter()
        self._loaded: dict[str, Any] | None = None  # the state new readers start from
        self._reader: _SlotReader | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A copy (a worker) starts from the last loaded state: open files do not travel.
        return {**self.__dict__, "_reader": None}

    def _current_reader(self) -> _SlotReader:
        # A reader made in another process (inherited by a forked worker) is not ours to use.
        if self._reader is None or self._reader.pid != os.getpid():
            self._reader = _SlotReader(self, self._loaded)
        return self._reader

    def __iter__(self) -> Iterator[torch.Tensor]:
        reader = self._current_reader()
        while (block := reader.next_block()) is not None:
            yield block

    def state_dict(self) -> dict[str, Any]:
        """This slot's exact state (see the class docstring); cheap enough to take every batch."""
        return self._current_reader().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from one slot's `state_dict()` (same layout, exact) or from `merge_states(...)`
        (any layout, document granularity); which one is detected from the keys."""
        if "done_files" in state:
            self._check_saved(state["files_fingerprint"], state["seq_len"])
            log.info(
                "raw text: resuming at a different layout from document positions (epoch %d, %d files done, "
                "%d partly read); up to %s documents read before the save may be read again",
                state["epoch"], len(state["done_files"]), len(state["partial"]),
                state.get("reread_documents", "an unknown number of"),
            )
            self.skipped.count = int(state.get("skipped", 0))
        elif "layout" in state:
            self._check_saved(state["layout"]["files_fingerprint"], state["layout"]["seq_len"])
        else:
            raise ValueError(f"not a RawTextBlocks state (keys: {sorted(state)})")
        self._loaded, self._reader = state, None

    def _check_saved(self, fingerprint: str, seq_len: int) -> None:
        if fingerprint != self.fingerprint:
            raise DataError(
                f"the saved raw-text position is for another file list (fingerprint {fingerprint}); these "
                f"{len(self.files)} files have fingerprint {self.fingerprint}"
            )
        if seq_len != self.seq_len:
            raise DataError(f"the saved raw-text position is for seq_len {seq_len}, this run has {self.seq_len}")

    def epoch_order(self, epoch: int) -> list[int]:
        """File indices in the order epoch `epoch` reads them."""
        return torch.randperm(len(self.files), generator=keyed_generator(self.seed, "raw_files", epoch)).tolist()


class _SlotReader:
    """One slot's stream: reading position, packer and shuffle buffer (all that a state saves).

    Work: per epoch, the slot's list of items [file index, first document, end] (end = the
    file's document count once read, else -1). Each packed document and each buffered block
    carries its origin (epoch, item, document index) so that a merge knows what is in flight.
    """

    def __init__(self, ds: RawTextBlocks, state: dict[str, Any] | None) -> None:
        worker, num_workers = worker_slot()
        self.ds, self.pid = ds, os.getpid()
        self.eos, self.span = ds.tokenizer.eos_id, ds.seq_len - 2
        self.slot, self.num_slots = ds.rank * num_workers + worker, ds.world_size * num_workers
        self.layout = {
            "world_size": ds.world_size, "num_workers": num_workers,
            "seq_len": ds.seq_len, "shuffle_buffer": ds.shuffle_buffer, "files_fingerprint": ds.fingerprint,
        }
        doc_mode = len(ds.files) < self.num_slots
        self.stride, self.offset = (self.num_slots, self.slot) if doc_mode else (1, 0)
        # In document mode every slot parses every record: only slot 0 counts the bad ones.
        self.skipped = ds.skipped if self.offset == 0 else SkipCounter()
        self.buffer = torch.zeros((ds.shuffle_buffer, self.span), dtype=torch.int32)
        self.origins = torch.zeros((ds.shuffle_buffer, 3), dtype=torch.int64)
        self.documents: Iterator[str] | None = None  # the open file, at document `self.doc`
        self.empty_files: set[int] = set()  # files with no document for this slot (hang guard)
        if state is not None and "layout" in state:
            self._restore(state)
            return
        self.filled = 0
        self.tokens = torch.zeros(0, dtype=torch.int32)  # the packer's leftover
        self.token_docs: deque[list[int]] = deque()  # [start in tokens, epoch, item, doc] per document
        self.works: dict[int, list[list[int]]] = {}
        self.docs_per_epoch: list[int] = []
        self.resume_epoch = -1 if state is None else int(state["epoch"])  # the epoch a merged state starts
        self._start_epoch(max(self.resume_epoch, 0), state)

    # ---- reading -----------------------------------------------------------------------------
    def _start_epoch(self, epoch: int, plan: dict[str, Any] | None = None) -> None:
        order = self.ds.epoch_order(epoch)
        if plan is None:
            items = [[f, 0, -1] for f in order]
        else:
            done, partial = set(plan["done_files"]), plan["partial"]
            names = self.ds.names
            items = [[f, int(partial.get(names[f], 0)), -1] for f in order if names[f] not in done]
        if self.stride == 1:
            items = items[self.slot :: self.num_slots]
        self.epoch, self.item = epoch, 0
        self.doc = items[0][1] if items else 0
        self.works[epoch] = items
        self.docs_per_epoch += [0] * (epoch + 1 - len(self.docs_per_epoch))
        self.generator = keyed_generator(self.ds.seed, "raw_shuffle", epoch, self.slot)
        self.documents = None
        # Keep the work lists a merge may still need: from the oldest epoch in flight.
        oldest = self._restart_point()[0]
        self.works = {e: w for e, w in self.works.items() if e >= oldest}

    def _next_document(self) -> tuple[str, list[int]] | None:
        """The slot's next document and its origin (epoch, item, doc); None after max_epochs."""
        while self.ds.max_epochs is None or self.epoch < self.ds.max_epochs:
            items = self.works[self.epoch]
            if self.item == len(items):
                self._end_epoch()
                continue
            file, start, _ = items[self.item]
            if self.documents is None:
                self.documents = iter_documents(
                    self.ds.files[file], **self.ds.read_options, skipped=self.skipped, start=self.doc
                )
                self.opened_at, self.own_in_file = self.doc, 0
            for text in self.documents:
                index = self.doc
                self.doc += 1
                if index % self.stride == self.offset:
                    self.own_in_file += 1
                    self.docs_per_epoch[self.epoch] += 1
                    return text, [self.epoch, self.item, index]
            if self.opened_at == 0 and self.own_in_file == 0:
                self.empty_files.add(file)
            items[self.item][2] = self.doc
            self.item += 1
            self.doc = items[self.item][1] if self.item < len(items) else 0
            self.documents = None
        return None

    def _end_epoch(self) -> None:
        if (
            self.docs_per_epoch[self.epoch] == 0
            and self.epoch != self.resume_epoch
            and len(self.empty_files) == len(self.ds.files)
        ):
            raise DataError(
                f"reading slot {self.slot} of {self.num_slots} (rank x dataloader worker) gets no documents from "
                f"any of the {len(self.ds.files)} files: they are empty, or have fewer documents than there are slots"
            )
        self._start_epoch(self.epoch + 1)

    def _read_chunk(self) -> bool:
        """Tokenise just enough documents into the packer to fill a block (keeping little in
        flight); False at the end."""
        ids: list[int] = []
        encode, have = self.ds.tokenizer.encode, len(self.tokens)
        while have + len(ids) < self.span:
            found = self._next_document()
            if found is None:
                break
            text, origin = found
            self.token_docs.append([have + len(ids), *origin])
            ids += encode(text)
            ids.append(self.eos)
        if not ids:
            return False
        self.tokens = torch.cat((self.tokens, torch.from_numpy(np.array(ids, dtype=np.int32))))
        return True

    def _cut(self) -> tuple[torch.Tensor, list[int]] | None:
        """The next block's inside tokens and the origin of its first document; None at the end
        (max_epochs), after a last partial block padded with EOS."""
        while len(self.tokens) < self.span:
            if not self._read_chunk():
                if not len(self.tokens):
                    return None
                pad = torch.full((self.span - len(self.tokens),), self.eos, dtype=torch.int32)
                self.tokens = torch.cat((self.tokens, pad))
        inside, origin = self.tokens[: self.span], self.token_docs[0][1:]
        self.tokens = self.tokens[self.span :]
        for doc in self.token_docs:
            doc[0] -= self.span
        while len(self.token_docs) > 1 and self.token_docs[1][0] <= 0:
            self.token_docs.popleft()
        if not len(self.tokens):
            self.token_docs.clear()
        return inside, origin

    def next_block(self) -> torch.Tensor | None:
        """The next block out of the shuffle buffer; None when a finite run is drained."""
        while self.filled < len(self.buffer):
            cut = self._cut()
            if cut is None:
                return self._drain()
            self._put(self.filled, cut)
            self.filled += 1
        cut = self._cut()
        i = self._draw()
        block = self._frame(self.buffer[i])
        if cut is None:
            self._remove(i)
        else:
            self._put(i, cut)
        return block

    def _drain(self) -> torch.Tensor | None:
        if self.filled == 0:
            return None
        i = self._draw()
        block = self._frame(self.buffer[i])
        self._remove(i)
        return block

    def _draw(self) -> int:
        return int(torch.randint(self.filled, (1,), generator=self.generator))

    def _put(self, i: int, cut: tuple[torch.Tensor, list[int]]) -> None:
        self.buffer[i], self.origins[i] = cut[0], torch.tensor(cut[1])

    def _frame(self, inside: torch.Tensor) -> torch.Tensor:
        block = torch.empty(self.span + 2, dtype=torch.int64)
        block[0] = block[-1] = self.eos
        block[1:-1] = inside
        return block

    def _remove(self, i: int) -> None:
        self.filled -= 1
        self.buffer[i], self.origins[i] = self.buffer[self.filled], self.origins[self.filled]

    # ---- state -------------------------------------------------------------------------------
    def _restart_point(self) -> tuple[int, int, int]:
        """The oldest (epoch, item, doc) with tokens in flight, else the read position."""
        return _restart_point(self.origins[: self.filled], list(self.token_docs), (self.epoch, self.item, self.doc))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "layout": dict(self.layout),
            "slot": self.slot,
            "files": list(self.ds.names),
            "epoch": self.epoch,
            "item": self.item,
            "doc": self.doc,
            "resume_epoch": self.resume_epoch,
            "works": [[e, [list(i) for i in w]] for e, w in sorted(self.works.items())],
            "docs_per_epoch": list(self.docs_per_epoch),
            "tokens": self.tokens.clone(),
            "token_docs": [list(d) for d in self.token_docs],
            "buffer": self.buffer[: self.filled].clone(),
            "origins": self.origins[: self.filled].clone(),
            "generator": self.generator.get_state(),
            "skipped": self.skipped.count if self.skipped is self.ds.skipped else 0,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state["version"] != STATE_VERSION:
            raise DataError(f"raw-text state version {state['version']}, expected {STATE_VERSION}")
        if state["layout"] != self.layout or state["slot"] != self.slot:
            raise DataError(
                f"this raw-text state is of slot {state['slot']} at layout {state['layout']}, but it is loaded "
                f"by slot {self.slot} at layout {self.layout}; to resume at another layout, load "
                f"merge_states(all slot states) instead"
            )
        self.epoch, self.item, self.doc = int(state["epoch"]), int(state["item"]), int(state["doc"])
        self.resume_epoch = int(state["resume_epoch"])
        self.works = {int(e): [list(i) for i in w] for e, w in state["works"]}
        self.docs_per_epoch = list(state["docs_per_epoch"])
        self.tokens = state["tokens"].clone()
        self.token_docs = deque(list(d) for d in state["token_docs"])
        self.filled = len(state["buffer"])
        self.buffer[: self.filled], self.origins[: self.filled] = state["buffer"], state["origins"]
        self.generator = keyed_generator(self.ds.seed, "raw_shuffle", self.epoch, self.slot)
        self.generator.set_state(state["generator"])
        self.skipped.count = int(state["skipped"])


def _restart_point(origins: torch.Tensor, token_docs: list[list[int]], position: tuple[int, int, int]) -> tuple[int, int, int]:
    """The smallest (epoch, item, doc) among the buffered blocks' origins, the packer's first
    document and the read position."""
    candidates = [position] + [tuple(o) for o in origins.tolist()]
    if token_docs:
        candidates.append(tuple(token_docs[0][1:]))
    return min(candidates)


def dataset_states_from_loader_state(loader_state: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset states inside a StatefulDataLoader's `state_dict()`: one per worker (in worker
    order), or the one of the main process when num_workers=0."""
    snapshot = loader_state.get("_snapshot")
    if snapshot is None:
        states = [loader_state.get("dataset_state")]
    else:
        workers = snapshot["_worker_snapshots"]
        states = [workers[f"worker_{i}"].get("dataset_state") for i in range(len(workers))]
    if any(s is None for s in states):
        raise ValueError("the loader state holds no dataset state for some worker (was it a RawTextBlocks loader?)")
    return states


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the per-slot states of ALL slots of a run (every rank's workers) into a
    layout-free position: `{"epoch", "done_files", "partial": {file: documents}, ...}`.

    The epoch is the oldest one any slot still has tokens in flight from. In it, a file is done
    when no slot of that epoch still needs it, partial when every document before the given
    index was emitted, unread otherwise. Everything later is read again: the count is in
    "reread_documents" (an upper bound).
    """
    if not states:
        raise ValueError("merge_states needs at least one slot state")
    if any("layout" not in s for s in states):
        raise ValueError("merge_states takes per-slot states (RawTextBlocks.state_dict()), not merged ones")
    layout, names = states[0]["layout"], states[0]["files"]
    num_slots = layout["world_size"] * layout["num_workers"]
    if any(s["layout"] != layout for s in states) or sorted(s["slot"] for s in states) != list(range(num_slots)):
        raise ValueError(
            f"merge_states needs the states of all {num_slots} slots of one layout; got slots "
            f"{sorted(s['slot'] for s in states)} of layouts {[s['layout'] for s in states]}"
        )
    restarts = [_restart_point(s["origins"], s["token_docs"], (s["epoch"], s["item"], s["doc"])) for s in states]
    epoch = min(r[0] for r in restarts)
    first_unsent: dict[int, float] = {}  # file -> first document of `epoch` not known to be emitted
    for state, (e, item, doc) in zip(states, restarts):
        if e != epoch:
            continue
        for k, (file, start, _) in enumerate(dict(state["works"]).get(epoch, [])):
            first = math.inf if k < item else doc if k == item else start
            first_unsent[file] = min(first_unsent.get(file, math.inf), first)
    reread = sum(_reread(state, epoch, first_unsent, num_slots) for state in states)
    return {
        "epoch": epoch,
        "done_files": [n for f, n in enumerate(names) if first_unsent.get(f, math.inf) == math.inf],
        "partial": {names[f]: int(n) for f, n in sorted(first_unsent.items()) if 0 < n < math.inf},
        "files_fingerprint": layout["files_fingerprint"],
        "seq_len": layout["seq_len"],
        "reread_documents": reread,
        "skipped": sum(int(s["skipped"]) for s in states),
    }


def _reread(state: dict[str, Any], epoch: int, first_unsent: dict[int, float], num_slots: int) -> int:
    """How many documents this slot read at or after the merged position (an upper bound)."""
    doc_mode = len(state["files"]) < num_slots
    stride, offset = (num_slots, state["slot"]) if doc_mode else (1, 0)
    works = dict(state["works"])
    total = 0
    for e in range(epoch, state["epoch"] + 1):
        if e not in works:  # pruned: the whole epoch counts, except files of `epoch` done in file mode
            total += state["docs_per_epoch"][e] if (doc_mode or e > epoch) else 0
            continue
        for k, (file, start, end) in enumerate(works[e]):
            if e == state["epoch"] and k >= state["item"]:
                end = state["doc"] if k == state["item"] else start
            kept = first_unsent.get(file, math.inf) if e == epoch else start
            if kept != math.inf:
                total += _own_count(max(start, int(kept)), end, stride, offset)
    return total


def build_raw_loader(dataset: RawTextBlocks, local_batch: int, num_workers: int = 0) -> Any:
    """A torchdata StatefulDataLoader of batches [local_batch, seq_len]; its `state_dict()` holds
    each worker's dataset state (see `dataset_states_from_loader_state`)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(
        dataset, batch_size=local_batch, num_workers=num_workers, persistent_workers=num_workers > 0
    )


class RawLoader(TrainLoader):
    """Raw text tokenised on the fly; each rank's loader state is saved.

    Resumed at the same layout (world size, workers) it continues exactly; at another layout it
    restarts each file at the documents already consumed (documents in flight are re-read). A
    batch's rows are labelled with the rank's global rows of the plan, though which blocks they
    hold depends on the layout.
    """

    def __init__(self, plan: BatchPlan, blocks: RawTextBlocks, num_workers: int, fingerprint: str,
                 allow_fingerprint_mismatch: bool) -> None:
        super().__init__(plan)
        self.blocks, self.num_workers = blocks, num_workers
        self.fingerprint, self.allow_fingerprint_mismatch = fingerprint, allow_fingerprint_mismatch
        self.loader = build_raw_loader(blocks, plan.local_batch, num_workers)
        self.step = 0
        self._batches: Iterator[torch.Tensor] | None = None

    def skipped_records(self) -> int:
        """Bad records skipped so far; with dataloader workers the counts live in the workers and
        are read from the states they report to the loader."""
        if self.num_workers == 0:
            return self.blocks.skipped.count
        return sum(int(s.get("skipped", 0)) for s in dataset_states_from_loader_state(self.loader.state_dict()))

    def next_batch(self) -> Batch:
        if self._batches is None:
            self._batches = iter(self.loader)
        batch = Batch(next_from_workers(self._batches), self.plan.rows, self.step, self.plan.global_batch)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"rank": self.plan.rank, "world_size": self.plan.world_size, "num_workers": self.num_workers,
                "fingerprint": self.fingerprint, "loader": self.loader.state_dict(), "step": self.step}

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        check_fingerprint(states[0]["fingerprint"], self.fingerprint, self.allow_fingerprint_mismatch)
        self.step = int(states[0]["step"])
        same_layout = len(states) == self.plan.world_size and states[0]["num_workers"] == self.num_workers
        if same_layout:
            self.loader.load_state_dict(states[self.plan.rank]["loader"])
        else:
            slots = [s for state in states for s in dataset_states_from_loader_state(state["loader"])]
            self.blocks.load_state_dict(merge_states(slots))
            self.loader = build_raw_loader(self.blocks, self.plan.local_batch, self.num_workers)
        self._batches = None

    def close(self) -> None:
        self._batches = None
