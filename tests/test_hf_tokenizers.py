"""Hugging Face model folders' tokenizers: tiny tokenizer.json files trained here (a byte-level
BPE with special tokens and a mask token among them, a chat template), their ids, chat templates
in a sandbox, the id-by-id comparison of two tokenizers, bad folders in one line; GPT-2's
tokenizer.json against tiktoken's GPT-2 on real text."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_prepare import prepare_data
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from edlm_dist.config import DataConfig
from edlm_dist.data import (
    DataError,
    GPT2Tokenizer,
    HFTokenizer,
    TokenizerError,
    build_dataset,
    build_tokenizer,
    check_same_token_ids,
    run_tokenizer,
    tokenizer_from_dict,
)

SENTENCES = [
    "the cat sat on the mat and the dog sat on the log",
    "a quick brown fox jumps over the lazy dog, twice",
    "diffusion models unmask tokens; energies rank whole sequences",
    "naïve café owners count 12345 coins\nthen 678 more",
]
# LLaDA-like: BOS and EOS first, the mask among the specials that follow the merged tokens
SPECIALS_AFTER = ["<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
TEXT = "the lazy cat unmasks 42 tokens\nnaïve dog"


def _trained_bpe(add_prefix_space: bool = False) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=["<|endoftext|>", "<|startoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS_AFTER])
    return tok


def _write_folder(folder: Path, tok_json: dict[str, Any] | None, config: dict[str, Any] | None = None,
                  model_config: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True)
    if tok_json is not None:
        (folder / "tokenizer.json").write_text(json.dumps(tok_json))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if model_config is not None:
        (folder / "config.json").write_text(json.dumps(model_config))
    return folder


def _config(tok: Tokenizer, **extra: Any) -> dict[str, Any]:
    """tokenizer_config.json as transformers writes it: the added tokens, the roles, the template."""
    added = {str(i): {"content": t.content, "special": t.special, "lstrip": False, "rstrip": False,
                      "normalized": False, "single_word": False}
             for i, t in tok.get_added_tokens_decoder().items()}
    return {"added_tokens_decoder": added, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast", **extra}


@pytest.fixture(scope="module")
def backend() -> Tokenizer:
    return _trained_bpe()


@pytest.fixture(scope="module")
def tiny_json(backend: Tokenizer) -> dict[str, Any]:
    return json.loads(backend.to_str())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, backend: Tokenizer, tiny_json: dict[str, Any]) -> Path:
    mask = backend.token_to_id("<|mdm_mask|>")
    return _write_folder(tmp_path_factory.mktemp("hf") / "tiny", tiny_json, _config(backend),
                         {"mask_token_id": mask, "eos_token_id": 0, "vocab_size": 384})


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> HFTokenizer:
    return HFTokenizer(str(tiny_dir))


def _variant(tmp_path: Path, tiny_dir: Path, tok_json: dict[str, Any], name: str = "variant") -> HFTokenizer:
    folder = tmp_path / name
    shutil.copytree(tiny_dir, folder)
    (folder / "tokenizer.json").write_text(json.dumps(tok_json))
    return HFTokenizer(str(folder))


def _one_line_error(excinfo: pytest.ExceptionInfo[TokenizerError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_special_ids_and_the_mask_inside_the_vocabulary(tiny: HFTokenizer, backend: Tokenizer) -> None:
    vocab = backend.get_vocab(with_added_tokens=True)
    assert tiny.vocab_size == max(vocab.values()) + 1 == backend.get_vocab_size(with_added_tokens=True)
    assert (tiny.eos_id, tiny.bos_id) == (0, 1)
    mask = vocab["<|mdm_mask|>"]
    assert tiny.mask_id == mask == tiny.vocab_size - len(SPECIALS_AFTER)  # three specials come after it
    assert tiny.mask_in_vocabulary and tiny.num_token_ids == tiny.vocab_size
    assert tiny.stop_ids == (0,)
    assert tiny.special_tokens == {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}


def test_encode_decode_round_trip(tiny: HFTokenizer, backend: Tokenizer) -> None:
    ids = tiny.encode(TEXT)
    assert ids == backend.encode(TEXT, add_special_tokens=False).ids
    assert len(ids) < len(TEXT.encode()) and tiny.decode(ids) == TEXT
    # a special token's text inside data is text, as GPT-2's <|endoftext|> is
    ids = tiny.encode("a<|endoftext|>b<|mdm_mask|>")
    assert tiny.eos_id not in ids and tiny.mask_id not in ids
    assert tiny.decode(ids) == "a<|endoftext|>b<|mdm_mask|>"
    # the mask decodes as its own text; ids past the vocabulary as the marker
    assert tiny.decode([*tiny.encode("cat"), tiny.mask_id, tiny.vocab_size + 5]) == "cat<|mdm_mask|>[MASK]"
    # a dataloader worker's pickled copy reads special tokens' text as text too
    clone = pickle.loads(pickle.dumps(tiny))
    assert clone.encode("a<|endoftext|>b") == tiny.encode("a<|endoftext|>b") and clone.mask_id == tiny.mask_id


def test_a_model_folder_without_a_mask_appends_one(tmp_path: Path, tiny_dir: Path, tiny: HFTokenizer) -> None:
    folder = tmp_path / "causal"
    shutil.copytree(tiny_dir, folder)
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 0}))
    causal = HFTokenizer(str(folder))
    assert causal.mask_id == causal.vocab_size == tiny.vocab_size
    assert not causal.mask_in_vocabulary and causal.num_token_ids == causal.vocab_size + 1


def test_roles_from_special_tokens_map_and_stops_from_generation_config(tmp_path: Path, tiny_dir: Path,
                                                                        backend: Tokenizer) -> None:
    folder = tmp_path / "legacy"
    shutil.copytree(tiny_dir, folder)
    config = {k: v for k, v in _config(backend).items() if k not in ("bos_token", "eos_token")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "eos_token": {"content": "<|eot_id|>", "lstrip": False}, "mask_token": "<|mdm_mask|>"}))
    eot, mask = backend.token_to_id("<|eot_id|>"), backend.token_to_id("<|mdm_mask|>")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [eot, 0], "mask_token_id": None}))
    tok = HFTokenizer(str(folder))
    assert (tok.eos_id, tok.bos_id, tok.mask_id, tok.stop_ids) == (eot, None, mask, (eot, 0))
    assert tok.special_tokens == {"eos_token": "<|eot_id|>", "mask_token": "<|mdm_mask|>"}
    (folder / "config.json").write_text(json.dumps({"mask_token_id": 3}))
    with pytest.raises(TokenizerError) as excinfo:
        HFTokenizer(str(folder))
    assert f"special_tokens_map.json names mask id {mask}, config.json names 3" in _one_line_error(excinfo)


def test_storage_round_trip_and_fingerprint(tmp_path: Path, tiny_dir: Path, tiny: HFTokenizer) -> None:
    again = tokenizer_from_dict(tiny.to_dict())
    assert isinstance(again, HFTokenizer) and again.encode(TEXT) == tiny.encode(TEXT)
    assert tiny.to_dict() == {"name": "hf", "path": str(tiny_dir)}
    assert again.fingerprint() == tiny.fingerprint() == build_tokenizer("hf", str(tiny_dir)).fingerprint()
    folder = tmp_path / "no_mask"
    shutil.copytree(tiny_dir, folder)
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 0}))
    assert HFTokenizer(str(folder)).fingerprint() != tiny.fingerprint()  # the mask id is part of it


def test_chat_template_renders_and_encodes(tiny: HFTokenizer, backend: Tokenizer) -> None:
    messages = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "the cat?"}]
    text = tiny.render_chat(messages)
    assert text == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nthe cat?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tiny.render_chat(messages, add_generation_prompt=False).endswith("the cat?<|eot_id|>")
    ids = tiny.encode_chat(messages)
    vocab = {t: backend.token_to_id(t) for t in SPECIALS_AFTER}
    assert ids[0] == tiny.bos_id and ids.count(vocab["<|start_header_id|>"]) == 3
    assert ids.count(vocab["<|eot_id|>"]) == 2 and ids[-1] == tiny.encode("\n\n")[-1]
    assert tiny.decode(ids) == text
    # data text still reads the same characters as text
    assert vocab["<|eot_id|>"] not in tiny.encode(text)


def test_chat_template_transformers_agrees(tiny_dir: Path, tiny: HFTokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir / "tokenizer.json"),
                                                     bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    reference.chat_template = CHAT_TEMPLATE
    messages = [{"role": "user", "content": "hello  "}, {"role": "assistant", "content": "the dog"}]
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tiny.render_chat(messages) == expected
    assert tiny.encode_chat(messages) == reference(expected, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template, words", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox refuses"),
    ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "sandbox refuses"),
    ("{% set _ = messages.append({'role': 'x'}) %}{{ messages | length }}", "sandbox refuses"),
    ("{{ raise_exception('only user and assistant roles') }}", "only user and assistant roles"),
    ("{% for m in messages %}{{ m.content }", "syntax error on line 1"),
])
def test_chat_template_that_tries_code_is_refused(tmp_path: Path, tiny_dir: Path, backend: Tokenizer,
                                                  template: str, words: str) -> None:
    folder = tmp_path / "evil"
    shutil.copytree(tiny_dir, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(_config(backend, chat_template=template)))
    tok = HFTokenizer(str(folder))
    with pytest.raises(TokenizerError) as excinfo:
        tok.render_chat([{"role": "user", "content": "hi"}])
    message = _one_line_error(excinfo)
    assert words in message and str(folder) in message


def test_chat_template_file_and_absence(tmp_path: Path, tiny_dir: Path, backend: Tokenizer) -> None:
    folder = tmp_path / "file"
    shutil.copytree(tiny_dir, folder)
    (folder / "chat_template.jinja").write_text("{% if tools is not none %}{{ tools | tojson }}{% endif %}"
                                               "[{{ messages[0]['content'] }}]")
    tok = HFTokenizer(str(folder))
    assert tok.render_chat([{"role": "user", "content": "x"}]) == "[x]"  # tools is None, as transformers passes it
    assert tok.render_chat([{"role": "user", "content": "x"}], tools=[{"name": "é"}]) == '[{"name": "é"}][x]'

    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    (bare / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in _config(backend).items()
                                                            if k != "chat_template"}))
    with pytest.raises(TokenizerError, match="has no chat template"):
        HFTokenizer(str(bare)).render_chat([{"role": "user", "content": "x"}])


def test_same_tokenizer_compares_equal(tmp_path: Path, tiny_dir: Path, tiny: HFTokenizer,
                                       tiny_json: dict[str, Any]) -> None:
    check_same_token_ids(tiny, _variant(tmp_path, tiny_dir, tiny_json))
    check_same_token_ids(tiny, tiny)


def test_swapped_ids_are_refused_in_one_line(tmp_path: Path, tiny_dir: Path, tiny: HFTokenizer,
                                             tiny_json: dict[str, Any]) -> None:
    swapped = json.loads(json.dumps(tiny_json))
    vocab = swapped["model"]["vocab"]
    a, b = "Ġsat", "Ġdog"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    first = min(vocab[a], vocab[b])
    with pytest.raises(TokenizerError) as excinfo:
        check_same_token_ids(tiny, _variant(tmp_path, tiny_dir, swapped))
    message = _one_line_error(excinfo)
    assert str(tiny_dir) in message and str(tmp_path / "variant") in message
    assert f"id {first} is " in message and "'Ġsat'" in message and "'Ġdog'" in message


def test_an_extra_token_is_refused_unless_outside_the_compared_ids(tmp_path: Path, tiny_dir: Path,
                                                                   tiny: HFTokenizer, backend: Tokenizer) -> None:
    extra = Tokenizer.from_str(backend.to_str())
    extra.add_special_tokens([AddedToken("<|beginoftext|>", special=True, normalized=False)])
    other = _variant(tmp_path, tiny_dir, json.loads(extra.to_str()))
    with pytest.raises(TokenizerError) as excinfo:
        check_same_token_ids(tiny, other)
    assert f"id {tiny.vocab_size} is absent in the first, '<|beginoftext|>' in the second" in _one_line_error(excinfo)
    # the ids a denoiser writes (here: all but its mask) are the same in both
    check_same_token_ids(tiny, other, ids=[i for i in range(tiny.vocab_size) if i != tiny.mask_id])


def test_different_special_tokens_are_refused(tmp_path: Path, tiny_dir: Path, tiny: HFTokenizer,
                                              tiny_json: dict[str, Any]) -> None:
    plain = json.loads(json.dumps(tiny_json))
    entry = next(e for e in plain["added_tokens"] if e["content"] == "<|eot_id|>")
    entry["special"] = False
    with pytest.raises(TokenizerError) as excinfo:
        check_same_token_ids(tiny, _variant(tmp_path, tiny_dir, plain))
    assert (f"id {entry['id']} ('<|eot_id|>') is a special token in the first, an added token in the second"
            in _one_line_error(excinfo))


def test_different_merges_or_pre_tokeniser_are_refused(tmp_path: Path, tiny_dir: Path, tiny: HFTokenizer,
                                                       tiny_json: dict[str, Any]) -> None:
    reordered = json.loads(json.dumps(tiny_json))
    merges = reordered["model"]["merges"]
    merges[3], merges[4] = merges[4], merges[3]
    with pytest.raises(TokenizerError) as excinfo:
        check_same_token_ids(tiny, _variant(tmp_path, tiny_dir, reordered, "reordered"))
    assert f"merge 3 is {' '.join(tiny_json['model']['merges'][3])!r} in the first" in _one_line_error(excinfo)
    prefixed = json.loads(json.dumps(tiny_json))
    prefixed["pre_tokenizer"]["add_prefix_space"] = True
    with pytest.raises(TokenizerError) as excinfo:
        check_same_token_ids(tiny, _variant(tmp_path, tiny_dir, prefixed, "prefixed"))
    assert ("the pre-tokenizer step 1 add_prefix_space differs: false in the first, true in the second"
            in _one_line_error(excinfo))


def test_tokenizers_without_a_table_are_refused() -> None:
    with pytest.raises(TokenizerError, match="char tokenizer cannot be compared"):
        check_same_token_ids(build_tokenizer("char", corpus="ab"), build_tokenizer("char", corpus="ab"))


def test_slow_qwen2_files_read_as_transformers_converts_them(tmp_path: Path) -> None:
    """A Dream-like folder (vocab.json + merges.txt, Qwen2's split, added tokens in the config)
    against the tokenizer.json transformers' own Qwen2 tokenizer builds from the same files."""
    transformers = pytest.importorskip("transformers")
    data = json.loads(_trained_bpe().to_str())
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "vocab.json").write_text(json.dumps(data["model"]["vocab"]))
    (slow / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in data["model"]["merges"]) + "\n")
    added = {str(e["id"]): {k: e[k] for k in ("content", "special", "lstrip", "rstrip", "normalized", "single_word")}
             for e in data["added_tokens"]}
    config = {"added_tokens_decoder": added, "eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>",
              "tokenizer_class": "Qwen2Tokenizer"}
    (slow / "tokenizer_config.json").write_text(json.dumps(config))
    reference = transformers.AutoTokenizer.from_pretrained(str(slow), local_files_only=True)
    fast = tmp_path / "fast"
    fast.mkdir()
    reference.backend_tokenizer.save(str(fast / "tokenizer.json"))
    (fast / "tokenizer_config.json").write_text(json.dumps(config))
    (slow / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "DreamTokenizer"}))
    ours, theirs = HFTokenizer(str(slow)), HFTokenizer(str(fast))
    check_same_token_ids(ours, theirs)
    text = "Cafe\u0301 ﬁve 12345 dogs\r\n\n  sat; the CAT's mat"  # NFC, single digits, newlines, contractions
    assert ours.encode(text) == theirs.encode(text) == reference.encode(text, add_special_tokens=False)
    mask = next(e["id"] for e in data["added_tokens"] if e["content"] == "<|mdm_mask|>")
    assert ours.mask_id == theirs.mask_id == reference.mask_token_id == mask


def test_slow_files_of_an_unknown_class_are_refused(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "llama", None, {"tokenizer_class": "LlamaTokenizer"})
    (folder / "vocab.json").write_text("{}")
    (folder / "merges.txt").write_text("")
    with pytest.raises(TokenizerError, match="read only for the tokenizer classes .*'LlamaTokenizer'"):
        HFTokenizer(str(folder))


@pytest.mark.parametrize("case, words", [
    ("missing folder", "does not exist"),
    ("no tokenizer.json", "holds no tokenizer.json (nor vocab.json + merges.txt)"),
    ("garbled tokenizer.json", "cannot read '{folder}/tokenizer.json'"),
    ("garbled tokenizer_config.json", "cannot read '{folder}/tokenizer_config.json'"),
    ("config not an object", "'{folder}/config.json' should hold a JSON object"),
    ("eos not a token", "the eos_token '<|nothing|>' is not a token"),
    ("no eos", "names no EOS token"),
    ("masks disagree", "tokenizer_config.json names mask id {mask}, config.json names 3"),
    ("mask id not a token", "config.json' names token id 9999"),
    ("added token at a taken id", "added token '5' is '<|extra|>'"),
    ("bad mask_token_id", "mask_token_id should be a token id"),
])
def test_bad_folders_are_one_line(tmp_path: Path, backend: Tokenizer, tiny_json: dict[str, Any],
                                  case: str, words: str) -> None:
    folder = tmp_path / "model"
    mask = backend.token_to_id("<|mdm_mask|>")
    config, model_config = _config(backend), {"mask_token_id": mask}
    tok_json: Any = tiny_json
    if case == "no tokenizer.json":
        tok_json = None
    if case == "eos not a token":
        config["eos_token"] = "<|nothing|>"
    if case == "no eos":
        config.pop("eos_token")
    if case == "masks disagree":
        config["mask_token"] = "<|mdm_mask|>"
        model_config["mask_token_id"] = 3
    if case == "mask id not a token":
        model_config["mask_token_id"] = 9999
    if case == "added token at a taken id":
        config["added_tokens_decoder"]["5"] = {"content": "<|extra|>", "special": True}
    if case == "bad mask_token_id":
        model_config["mask_token_id"] = "126336"
    if case != "missing folder":
        _write_folder(folder, tok_json, config, model_config)
    if case == "garbled tokenizer.json":
        (folder / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
    if case == "garbled tokenizer_config.json":
        (folder / "tokenizer_config.json").write_bytes(b"\xff\xfe not json")
    if case == "config not an object":
        (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError) as excinfo:
        HFTokenizer(str(folder))
    assert words.format(folder=folder, mask=mask) in _one_line_error(excinfo)


def test_config_names_the_hf_tokenizer(tmp_path: Path, tiny_dir: Path, tiny: HFTokenizer) -> None:
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(SENTENCES * 20))
    cfg = DataConfig(dataset="text", path=str(text_file), tokenizer="hf", tokenizer_path=str(tiny_dir), seq_len=16)
    dataset = build_dataset(cfg)
    assert isinstance(dataset.tokenizer, HFTokenizer) and dataset.tokenizer.mask_id == tiny.mask_id
    assert run_tokenizer(cfg).fingerprint() == tiny.fingerprint()
    with pytest.raises(DataError, match="data.tokenizer = 'hf' needs data.tokenizer_path"):
        build_dataset(DataConfig(dataset="text", path=str(text_file), tokenizer="hf"))
    with pytest.raises(TokenizerError, match="needs data.tokenizer_path"):
        build_tokenizer("hf")


@pytest.fixture(scope="module")
def gpt2_json_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2's tokenizer.json as Hugging Face ships it, built from the shared BPE files."""
    files = data_dir / "gpt2_tokenizer"
    tok = Tokenizer(models.BPE.from_file(str(files / "encoder.json"), str(files / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    folder = tmp_path_factory.mktemp("gpt2") / "gpt2"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"bos_token_id": 50256, "eos_token_id": 50256}))
    return folder


@pytest.fixture(scope="module")
def tiktoken_gpt2(data_dir: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer(str(data_dir / "gpt2_tokenizer"))


@pytest.mark.data
def test_gpt2_tokenizer_json_matches_tiktoken(data_dir: Path, gpt2_json_dir: Path,
                                              tiktoken_gpt2: GPT2Tokenizer) -> None:
    hf = HFTokenizer(str(gpt2_json_dir))
    assert (hf.vocab_size, hf.eos_id, hf.bos_id, hf.mask_id) == (50257, 50256, 50256, 50257)
    check_same_token_ids(tiktoken_gpt2, hf)
    check_same_token_ids(hf, tiktoken_gpt2)
    texts = [(data_dir / "wikitext2" / "wiki.valid.tokens").read_text(encoding="utf-8")[:100_000],
             (data_dir / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")[:50_000],
             "a<|endoftext|>b  \n\n\t café 1234567 don't"]
    for text in texts:
        ids = hf.encode(text)
        assert ids == tiktoken_gpt2.encode(text)
        assert hf.decode(ids) == text
    assert len(hf.encode(texts[0])) > 20_000


@pytest.mark.data
def test_gpt2_slow_files_and_a_changed_gpt2_are_told_apart(data_dir: Path, gpt2_json_dir: Path, tmp_path: Path,
                                                            tiktoken_gpt2: GPT2Tokenizer) -> None:
    slow = tmp_path / "slow"
    slow.mkdir()
    shutil.copy(data_dir / "gpt2_tokenizer" / "encoder.json", slow / "vocab.json")
    shutil.copy(data_dir / "gpt2_tokenizer" / "vocab.bpe", slow / "merges.txt")
    (slow / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>",
        "added_tokens_decoder": {"50256": {"content": "<|endoftext|>", "special": True}}}))
    check_same_token_ids(HFTokenizer(str(slow)), tiktoken_gpt2)
    data = json.loads((gpt2_json_dir / "tokenizer.json").read_text())
    merges = data["model"]["merges"]
    merges[100], merges[101] = merges[101], merges[100]
    changed = tmp_path / "changed"
    shutil.copytree(gpt2_json_dir, changed)
    (changed / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError) as excinfo:
        check_same_token_ids(tiktoken_gpt2, HFTokenizer(str(changed)))
    assert "merge 100 ('Ġ (') of the second makes id 357, where the other's merged token 100 is id 356" \
        in _one_line_error(excinfo)


def test_a_corpus_prepared_with_a_model_folder(tmp_path: Path, tiny_dir: Path, tiny: HFTokenizer) -> None:
    """tools/prepare_data.py --tokenizer hf: the manifest names the folder; training reads the
    tokenizer from data.tokenizer_path (else that folder) and refuses another fingerprint."""
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES * 3))
    out = tmp_path / "corpus"
    prepare_data.main(["--source", str(source), "--out", str(out), "--tokenizer", "hf",
                       "--tokenizer-path", str(tiny_dir), "--val-docs", "2", "--workers", "1"])
    manifest = json.loads((out / "manifest.json").read_text())["tokenizer"]
    assert manifest["name"] == "hf" and manifest["fingerprint"] == tiny.fingerprint()
    assert manifest["vocab_size"] == tiny.vocab_size and manifest["eos_id"] == tiny.eos_id
    for path in ("", str(tiny_dir)):
        dataset = build_dataset(DataConfig(dataset="files", path=str(out), tokenizer="hf", tokenizer_path=path,
                                           seq_len=8))
        assert dataset.tokenizer.fingerprint() == tiny.fingerprint()
    other = tmp_path / "no_mask"
    shutil.copytree(tiny_dir, other)
    (other / "config.json").write_text(json.dumps({"eos_token_id": 0}))
    with pytest.raises(DataError, match=f"tokenised with hf {tiny.fingerprint()}"):
        build_dataset(DataConfig(dataset="files", path=str(out), tokenizer="hf", tokenizer_path=str(other), seq_len=8))


def test_chat_prompts_are_user_messages_in_the_template(tmp_path: Path, tiny: HFTokenizer) -> None:
    from edlm_dist.config import ConfigError
    from edlm_dist.evaluation.sampler import read_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("what does the cat do?\n\nname a dog\n", encoding="utf-8")
    chats = read_prompts(str(prompts), tiny, seq_len=64, chat=True)
    assert chats == [tiny.encode_chat([{"role": "user", "content": line}]) for line in ("what does the cat do?",
                                                                                         "name a dog")]
    assert tiny.decode(chats[1]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")  # the turn opened
    assert read_prompts(str(prompts), tiny, seq_len=64) == [tiny.encode("what does the cat do?"), tiny.encode("name a dog")]
    with pytest.raises(ConfigError, match="sample.chat: the 'char' tokenizer of this model has no chat template"):
        read_prompts(str(prompts), build_tokenizer("char", corpus="abc def"), seq_len=64, chat=True)
