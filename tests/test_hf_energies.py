"""Imported Hugging Face models with their tokenizers: tools/import_hf.py copies a folder's
tokenizer files into the run, which decodes with them; a tiny LLaDA and a tiny Dream denoiser
sample (EDLM importance sampling) and are evaluated with a tiny Qwen2 and a tiny GPT-2 as `ar`
and `coar` energies; an energy or oracle whose tokenizer is not the denoiser's is refused in one
line with nothing written; the AR energy's conditionals put no mass on the mask's column."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from edlm_dist.config import EnergyConfig, load_run_config
from edlm_dist.data import run_tokenizer
from edlm_dist.data.tokenizers import HFTokenizer
from edlm_dist.diffusion.tokens import TokenSpace
from edlm_dist.energy.autoregressive import DataTokenScorer
from edlm_dist.energy.loading import energy_token_space
from edlm_dist.energy.shared_tokens import SideTokens, check_same_tokens
from edlm_dist.eval import main as evaluate
from edlm_dist.runs.weights import WeightsError, checkpoint_tokens, find_checkpoint, load_weights
from edlm_dist.sample import main as sample
from hf_reference import EOS, MASK, VOCAB, write_layout
from distributed_utils import run_distributed
from run_utils import one_line_error
from test_hf_interop import import_main

SEQ_LEN = 12
SHORT = 94  # qwen2-short's ids: the denoisers' data tokens 94 and 95 are past them
COMMON = ["--runtime.device=cpu", "--metrics.progress=false", "--job.seed=0"]
WORDS = [f"w{i}" for i in range(VOCAB)]


def write_tokenizer(folder: Path, mask: bool, renamed: int | None = None, size: int = VOCAB,
                    mask_id: int = MASK) -> None:
    """A WordLevel tokenizer.json of `size` ids (EOS at EOS; at `mask_id` the mask token of a
    denoiser, another special token for a causal LM) and its tokenizer_config.json; `renamed`:
    that id's word spelled differently."""
    words = [f"v{i}" if i == renamed else w for i, w in enumerate(WORDS[:size])]
    words[0], words[EOS] = "[UNK]", "<|endoftext|>"
    if mask_id < size:
        words[mask_id] = "<|mask|>" if mask else "<|reserved|>"
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(words[i], special=True) for i in sorted({0, EOS, mask_id}) if i < size])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "unk_token": "[UNK]", **({"mask_token": "<|mask|>"} if mask else {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Imported runs: llada and dream (denoisers), qwen2 and gpt2 (energies), each with its
    tokenizer; qwen2-renamed (one id different), qwen2-bare (no tokenizer files, EOS 92) and
    qwen2-short (the first SHORT ids only, as Qwen2.5 lacks Dream's last data token)."""
    root = tmp_path_factory.mktemp("hf")
    for name, layout, mask, renamed in [("llada", "llada", True, None), ("dream", "dream", True, None),
                                        ("qwen2", "qwen2", False, None), ("gpt2", "gpt2", False, None),
                                        ("qwen2-renamed", "qwen2", False, 7), ("qwen2-bare", "qwen2", False, None),
                                        ("qwen2-short", "qwen2", False, None)]:
        src = root / "src" / name
        write_layout(layout, src)
        if name == "qwen2-bare":
            config = json.loads((src / "config.json").read_text())
            (src / "config.json").write_text(json.dumps({**config, "eos_token_id": EOS + 1}))
        else:
            write_tokenizer(src, mask, renamed, size=SHORT if name == "qwen2-short" else VOCAB)
        import_main([str(src), "--out", str(root / "runs" / name), "--seq-len", str(SEQ_LEN)])
    shutil.rmtree(root / "src")  # the runs are self-contained
    return root / "runs"


def test_the_run_carries_and_decodes_with_its_tokenizer(runs, tmp_path):
    moved = tmp_path / "llada"
    shutil.copytree(runs / "llada", moved)  # a run folder read from elsewhere
    data = load_run_config(moved / "config.toml").data
    assert (data.tokenizer, data.tokenizer_path) == ("hf", "tokenizer")
    assert sorted(p.name for p in (moved / "tokenizer").iterdir()) == ["config.json", "tokenizer.json",
                                                                      "tokenizer_config.json"]
    tokenizer = run_tokenizer(find_checkpoint(moved).config.data)
    assert (tokenizer.vocab_size, tokenizer.mask_id, tokenizer.eos_id) == (VOCAB, MASK, EOS)
    assert tokenizer.decode([3, 4, EOS]) == "w3 w4 <|endoftext|>" and tokenizer.encode("w5 w6") == [5, 6]
    bare = load_run_config(runs / "qwen2-bare" / "config.toml").data
    assert (bare.tokenizer, bare.tokenizer_path) == ("hf", "") and not (runs / "qwen2-bare" / "tokenizer").exists()


def test_a_run_without_tokenizer_files_refuses_to_read_text(runs, tmp_path, capsys):
    err = one_line_error(capsys, evaluate, ["--checkpoint", str(runs / "qwen2-bare"), "--eval.datasets=ptb",
                                            "--out", str(tmp_path / "out"), *COMMON])
    assert "data.tokenizer = 'hf' needs data.tokenizer_path" in err, err


def test_an_imported_run_has_no_validation_data_of_its_own(runs, tmp_path, capsys):
    err = one_line_error(capsys, evaluate, ["--checkpoint", str(runs / "llada"), "--out", str(tmp_path / "out"),
                                            *COMMON])
    assert "the run has no validation data of its own" in err and "name a set in eval.datasets" in err, err


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(runs, tmp_path, capsys):
    src = tmp_path / "src"
    write_layout("llada", src)
    write_tokenizer(src, mask=False)  # names no mask token: the config's mask id 90 is "<|reserved|>"
    (src / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()),
                                                 "mask_token_id": None}))
    err = one_line_error(capsys, import_main, [str(src), "--out", str(tmp_path / "run")])
    assert "mask" in err and not (tmp_path / "run").exists()


def test_the_ar_energy_normalises_over_the_denoisers_data_tokens(runs):
    tokens = checkpoint_tokens(find_checkpoint(runs / "llada"))
    model, _ = load_weights(find_checkpoint(runs / "qwen2"))
    scorer = DataTokenScorer(model, tokens)
    x0 = torch.tensor([[3, 4, 5, 6, 91, 92, 1, 2, 8, 9, 10, 11]])
    every = [torch.full_like(x0, i) for i in tokens.data_ids().tolist()]
    mass = torch.stack(scorer.conditional_log_probs(x0, *every)).double().exp().sum(0)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-6, rtol=0)  # no mass on the mask's column
    own = model.token_log_probs(x0)  # the model's own, over all 96 columns, differs
    assert (scorer.token_log_probs(x0) - own).abs().min() > 0


def test_the_mask_may_lie_past_the_energys_ids_and_no_data_token_may(tmp_path):
    folders = {name: tmp_path / name for name in ("denoiser", "energy")}
    for folder in folders.values():
        folder.mkdir()
    write_tokenizer(folders["denoiser"], mask=True, mask_id=VOCAB - 1)  # Dream: the mask after the energy's ids
    write_tokenizer(folders["energy"], mask=False, size=VOCAB - 1, mask_id=VOCAB - 1)
    sides = {name: SideTokens(name, "hf", VOCAB - (name == "energy"), EOS, HFTokenizer(str(folder)))
             for name, folder in folders.items()}
    assert sides["denoiser"].tokenizer.mask_id == VOCAB - 1
    check_same_tokens(sides["energy"], sides["denoiser"], TokenSpace(VOCAB - 1, VOCAB))
    with pytest.raises(WeightsError, match=f"energy has {VOCAB - 1} token ids; denoiser writes data token {VOCAB - 1}"):
        check_same_tokens(sides["energy"], sides["denoiser"], TokenSpace(MASK, VOCAB))  # id 95 is data here


@pytest.mark.parametrize("denoiser", ["llada", "dream"])
def test_edlm_samples_and_evaluates_with_imported_causal_lms(runs, denoiser, tmp_path):
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "ptb.valid.txt").write_text("\n".join(" ".join(f"w{(7 * i + j) % 80 + 1}" for j in range(9))
                                                 for i in range(12)) + "\n")
    for energy in ("qwen2", "gpt2"):
        for kind in ("ar", "coar"):
            out = tmp_path / f"{energy}-{kind}"
            oracle = runs / ("gpt2" if energy == "qwen2" else "qwen2")  # Gen PPL from an imported causal LM
            sample(["--checkpoint", str(runs / denoiser), "--out", str(out), "--sample.num_samples=2",
                    "--sample.steps=4", "--sample.num_candidates=4", f"--energy.kind={kind}",
                    f"--energy.checkpoint={runs / energy}", f"--sample.oracle={oracle}", "--sample.reference=false",
                    *COMMON])
            records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
            assert len(records) == 2 and all(MASK not in r["tokens"] and r["text"] for r in records)
            assert json.loads((out / "summary.json").read_text())["gen_ppl"]["gen_ppl"] > 1
            evaluate(["--checkpoint", str(runs / denoiser), f"--eval.datasets=ptb:val={ptb}", "--eval.num_sequences=2",
                      "--eval.batch_size=2", "--eval.num_proposals=4", f"--energy.kind={kind}",
                      f"--energy.checkpoint={runs / energy}", "--out", str(out / "eval"), *COMMON])
            result = json.loads(next((out / "eval").rglob("step_*.json")).read_text())
            leave_one_out = "truncated" if kind == "coar" else "coupled"
            assert result["model"] == f"edlm_{kind}" and result["tokens"] == 2 * SEQ_LEN
            figures = {name: f["nats_per_token"] for name, f in result["figures"].items()}
            assert {f"{leave_one_out}_jackknife_n4", "conservative_low_n4"} <= set(figures), figures
            assert all(0 < value < 10 for value in figures.values()), figures


REFUSALS = {
    "one id different": ("qwen2-renamed", "does not share the tokenizer of the denoiser", "id 7"),
    "no tokenizer files, another EOS": ("qwen2-bare", "the EOS id of energy.checkpoint", "(92) does not match"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_an_energy_with_another_tokenizer_is_refused(runs, case, tmp_path, capsys):
    energy, *expected = REFUSALS[case]
    out = tmp_path / "out"
    for command, argv in ((sample, ["--out", str(out), "--sample.num_candidates=4"]),
                          (evaluate, ["--out", str(out), "--eval.datasets=ptb"])):
        err = one_line_error(capsys, command, ["--checkpoint", str(runs / "llada"), "--energy.kind=coar",
                                               f"--energy.checkpoint={runs / energy}", *argv, *COMMON])
        assert all(part in err for part in expected) and str(runs / energy) in err, err
        assert not [path for path in out.rglob("*") if path.is_file()]  # (the folder was checked writable)


def test_an_oracle_with_another_tokenizer_is_refused(runs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(runs / "llada"), "--out", str(out), "--sample.num_candidates=1",
            f"--sample.oracle={runs / 'qwen2-renamed'}", *COMMON]
    err = one_line_error(capsys, sample, argv)
    assert "does not share the tokenizer of the samples" in err and "id 7" in err, err
    assert not [path for path in out.rglob("*") if path.is_file()]


def _sample_on_two_ranks(argv: list[str]) -> None:
    sample(argv)


def test_candidates_of_an_imported_denoiser_spread_over_two_ranks(runs, tmp_path):
    """EDLM importance sampling of a LLaDA with a Qwen2 coAR energy, its k candidates split over
    two ranks (the law is the one process's: tests/test_sampler.py checks it on a toy)."""
    out = tmp_path / "two"
    run_distributed(_sample_on_two_ranks, 2, [
        "--checkpoint", str(runs / "llada"), "--sample.num_samples=2", "--sample.steps=4", "--sample.num_candidates=4",
        "--sample.mode=candidates", "--energy.kind=coar", f"--energy.checkpoint={runs / 'qwen2'}",
        "--sample.reference=false", "--out", str(out), *COMMON])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["mode"], summary["energy_evals_per_sample"]) == (2, "candidates", 16.0)
    assert 1 <= summary["mean_ess"] <= 4 and len(summary["peak_memory_gib_per_rank"]) == 2
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(MASK not in r["tokens"] and len(r["tokens"]) == SEQ_LEN for r in records)


def test_data_tokens_an_energy_lacks_are_never_drawn_or_scored(runs, tmp_path):
    """Dream with Qwen2.5 in miniature: the denoiser's data ids past the energy's vocabulary are
    excluded from the token space EDLM draws and scores in, and the rest is checked id by id."""
    denoiser = find_checkpoint(runs / "llada")
    energy = EnergyConfig(kind="coar", checkpoint=str(runs / "qwen2-short"))
    assert energy_token_space(energy, denoiser) == TokenSpace(MASK, VOCAB, excluded=(94, 95))
    assert energy_token_space(EnergyConfig(kind="coar", checkpoint=str(runs / "qwen2")), denoiser) == \
        checkpoint_tokens(denoiser)
    out = tmp_path / "samples"
    sample(["--checkpoint", str(runs / "llada"), "--out", str(out), "--sample.num_samples=8", "--sample.steps=4",
            "--sample.num_candidates=4", "--energy.kind=coar", f"--energy.checkpoint={runs / 'qwen2-short'}",
            "--sample.reference=false", *COMMON])
    drawn = {t for line in (out / "samples.jsonl").read_text().splitlines() for t in json.loads(line)["tokens"]}
    assert not drawn & {MASK, 94, 95} and len(drawn) > 20
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "ptb.valid.txt").write_text("\n".join(" ".join(f"w{(5 * i + j) % 80 + 1}" for j in range(9))
                                                 for i in range(6)) + "\n")
    evaluate(["--checkpoint", str(runs / "llada"), f"--eval.datasets=ptb:val={ptb}", "--eval.num_sequences=2",
              "--eval.batch_size=2", "--eval.num_proposals=4", "--energy.kind=coar",
              f"--energy.checkpoint={runs / 'qwen2-short'}", "--out", str(tmp_path / "eval"), *COMMON])
    figures = json.loads(next((tmp_path / "eval").rglob("step_*.json")).read_text())["figures"]
    assert all(0 < f["nats_per_token"] < 10 for f in figures.values()), figures
