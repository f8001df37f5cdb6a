"""Config loader: TOML + overrides, precedence, one-line user errors, round trip, CLI, exit helper."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

from edlm_dist.config import (
    MODEL_PRESETS,
    CliArgs,
    ConfigError,
    EvalProgram,
    SampleProgram,
    TrainProgram,
    config_to_dict,
    config_to_toml,
    exit_on_user_error,
    load_config,
    parse_cli,
    save_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(*args: object, **kwargs: object) -> str:
    """The message of the ConfigError that load_config raises, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(TrainProgram, *args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message
    return message


# --- defaults, precedence, overrides ---------------------------------------------------------


def test_no_file_gives_defaults() -> None:
    assert load_config(TrainProgram, None) == TrainProgram()


def test_precedence_defaults_preset_toml_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[model]\npreset = "small"\nhidden_size = 1536\n\n[training]\nsteps = 5\nglobal_batch_size = 8\n',
    )
    cfg = load_config(TrainProgram, path, ["--training.steps=7", "--model.n_layers", "2"])
    small = MODEL_PRESETS["small"]
    assert cfg.model.n_layers == 2  # CLI beats the preset
    assert cfg.model.hidden_size == 1536  # TOML beats the preset
    assert (cfg.model.n_heads, cfg.model.cond_dim) == (small["n_heads"], small["cond_dim"])  # preset beats defaults
    assert cfg.training.steps == 7  # CLI beats TOML
    assert cfg.training.global_batch_size == 8  # TOML beats defaults
    assert cfg.training.task == TrainProgram().training.task  # untouched default


def test_preset_from_command_line_keeps_explicit_sizes() -> None:
    cfg = load_config(TrainProgram, None, ["--model.preset=small", "--model.n_heads=24"])
    assert cfg.model.n_layers == MODEL_PRESETS["small"]["n_layers"]
    assert cfg.model.n_heads == 24


def test_both_override_syntaxes_and_tricky_values() -> None:
    cfg = load_config(TrainProgram, 
        None,
        ["--training.steps", "5", "--optim.lr=1e-3", "--job.seed", "-3", "--job.description=a=b", "--job.name="],
    )
    assert cfg.training.steps == 5
    assert cfg.optim.lr == 1e-3 and type(cfg.optim.lr) is float
    assert cfg.job.seed == -3
    assert cfg.job.description == "a=b"
    assert cfg.job.name == ""


def test_later_override_wins() -> None:
    assert load_config(TrainProgram, None, ["--training.steps=3", "--training.steps=4"]).training.steps == 4


@pytest.mark.parametrize("text", ["true", "True", "1", "yes", "YES"])
def test_bool_override_true(text: str) -> None:
    assert load_config(TrainProgram, None, [f"--debug.deterministic={text}"]).debug.deterministic is True


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no", "No"])
def test_bool_override_false(text: str) -> None:
    assert load_config(TrainProgram, None, [f"--checkpoint.enable={text}"]).checkpoint.enable is False


def test_float_override_accepts_int_text() -> None:
    cfg = load_config(TrainProgram, None, ["--optim.weight_decay=3"])
    assert cfg.optim.weight_decay == 3.0 and type(cfg.optim.weight_decay) is float


def test_toml_int_accepted_for_float(tmp_path: Path) -> None:
    cfg = load_config(TrainProgram, write(tmp_path, "[optim]\nweight_decay = 1\n"))
    assert cfg.optim.weight_decay == 1.0 and type(cfg.optim.weight_decay) is float


def test_literal_values_accepted() -> None:
    cfg = load_config(TrainProgram, None, ["--training.task=ar", "--diffusion.schedule", "cosine"])
    assert (cfg.training.task, cfg.diffusion.schedule) == ("ar", "cosine")


# --- errors: one line, naming file / key / value / suggestion -------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_of(path) == f"config file not found: {path}"


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nsteps = = 3\n")
    message = error_of(path)
    assert message.startswith(f"invalid TOML in {path}: ") and "line 2" in message


def test_unknown_section_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "[traning]\nsteps = 3\n")
    assert error_of(path) == f"unknown config section 'traning' in {path}; did you mean 'training'?"


def test_unknown_key_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nstpes = 3\n")
    assert error_of(path) == f"unknown config key 'training.stpes' in {path}; did you mean 'training.steps'?"


def test_unknown_key_on_command_line_suggests() -> None:
    message = error_of(None, ["--training.stpes=3"])
    assert "unknown config key 'training.stpes'" in message and "did you mean 'training.steps'?" in message


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    message = error_of(None, ["--sample.zzzzzz=1"])
    assert "'sample.zzzzzz'" in message and "sample.num_samples, sample.steps" in message


def test_section_must_be_table(tmp_path: Path) -> None:
    path = write(tmp_path, "training = 5\n")
    assert error_of(path) == f"config section 'training' in {path} must be a table, got 5 (int)"


def test_wrong_type_on_command_line() -> None:
    assert error_of(None, ["--training.steps=abc"]) == (
        "config key training.steps expects int, got 'abc' on the command line"
    )


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("steps = 1.5", "1.5 (float)"),
        ("steps = true", "True (bool)"),  # a TOML bool is not an int
        ('steps = "3"', "'3' (str)"),
    ],
)
def test_wrong_type_in_toml(tmp_path: Path, line: str, shown: str) -> None:
    path = write(tmp_path, f"[training]\n{line}\n")
    assert error_of(path) == f"config key training.steps expects int, got {shown} in {path}"


def test_toml_int_is_not_a_bool(tmp_path: Path) -> None:
    path = write(tmp_path, "[checkpoint]\nenable = 1\n")
    assert "config key checkpoint.enable expects bool, got 1 (int)" in error_of(path)


def test_bad_bool_text() -> None:
    assert "config key debug.deterministic expects bool, got 'maybe'" in error_of(None, ["--debug.deterministic=maybe"])


def test_literal_choice_on_command_line() -> None:
    assert error_of(None, ["--training.task=xyz"]) == (
        "config key training.task must be one of 'mdlm', 'ar', 'nce'; got 'xyz' on the command line"
    )


def test_literal_choice_in_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\ntask = 5\n")
    assert "config key training.task must be one of 'mdlm', 'ar', 'nce'; got 5 (int)" in error_of(path)


@pytest.mark.parametrize("arg", ["training.steps=5", "--steps=5", "--training.steps.x=5", "--.steps=5"])
def test_malformed_override(arg: str) -> None:
    assert error_of(None, [arg]) == f"override {arg!r} is not of the form --section.key=value"


@pytest.mark.parametrize("args", [["--training.steps"], ["--training.steps", "--optim.lr=1"]])
def test_override_without_value(args: list[str]) -> None:
    assert error_of(None, args).startswith("--training.steps needs a value")


def test_multiline_values_stay_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[training]\nsteps = """a\nb"""\n')
    assert "'a\\nb' (str)" in error_of(path)
    assert "\n" not in str(ConfigError("first\nsecond"))


# --- cross-field validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--training.steps=0", "config key training.steps must be >= 1, got 0"),
        ("--training.global_batch_size=0", "config key training.global_batch_size must be >= 1, got 0"),
        ("--training.micro_batch_size=-1", "config key training.micro_batch_size must be >= 0, got -1"),
        ("--data.seq_len=3", "config key data.seq_len must be >= 4 (room for BOS and EOS), got 3"),
        ("--model.n_layers=0", "config key model.n_layers must be >= 1, got 0"),
        ("--optim.lr=0", "config key optim.lr must be in (0, 1], got 0.0"),
        ("--optim.lr=nan", "config key optim.lr must be a finite number, got nan"),
        ("--optim.lr=inf", "config key optim.lr must be a finite number, got inf"),
        ("--optim.lr=1e38", "config key optim.lr must be in (0, 1], got 1e+38"),
        ("--optim.eps=-inf", "config key optim.eps must be a finite number, got -inf"),
        ("--optim.weight_decay=1e300", "optim.lr * optim.weight_decay = 3e+296 must be < 1 (AdamW shrinks the weights "
                                       "by that factor each step); lower optim.weight_decay"),
        ("--training.max_grad_norm=inf", "config key training.max_grad_norm must be a finite number, got inf"),
        ("--optim.warmup_steps=-1", "config key optim.warmup_steps must be >= 0, got -1"),
        ("--metrics.log_interval=0", "config key metrics.log_interval must be >= 1, got 0"),
        ("--metrics.eval_interval=0", "config key metrics.eval_interval must be >= 1, got 0"),
        ("--checkpoint.interval=0", "config key checkpoint.interval must be >= 1, got 0"),
        ("--checkpoint.keep_last=0", "config key checkpoint.keep_last must be >= 1, got 0"),
        ("--sample.steps=0", "config key sample.steps must be >= 1, got 0"),
        ("--model.dropout=1", "config key model.dropout must be in [0, 1), got 1.0"),
        ("--training.ema_decay=1", "config key training.ema_decay must be in [0, 1), got 1.0"),
        ("--diffusion.eps=0", "config key diffusion.eps must be in (0, 1), got 0.0"),
        ("--diffusion.t_min=1", "config key diffusion.t_min must be in [0, 1), got 1.0"),
        ("--data.val_fraction=1", "config key data.val_fraction must be in (0, 1), got 1.0"),
    ],
)
def test_bounds(override: str, expected: str) -> None:
    assert error_of(None, [override]) == expected


def test_bounds_edges_allowed() -> None:
    cfg = load_config(TrainProgram, None, ["--model.dropout=0", "--training.ema_decay=0", "--diffusion.t_min=0", "--data.seq_len=4"])
    assert cfg.data.seq_len == 4


def test_heads_must_divide_hidden_size() -> None:
    message = error_of(None, ["--model.hidden_size=130", "--model.n_heads=4"])
    assert "model.hidden_size (130)" in message and "model.n_heads (4)" in message


def test_head_dim_must_be_even() -> None:
    message = error_of(None, ["--model.hidden_size=132", "--model.n_heads=4"])
    assert "model.hidden_size / model.n_heads = 33 must be even" in message


def test_micro_batch_must_divide_global_batch() -> None:
    message = error_of(None, ["--training.global_batch_size=10", "--training.micro_batch_size=4"])
    assert "training.global_batch_size (10)" in message and "training.micro_batch_size (4)" in message


def test_text_dataset_needs_path() -> None:
    assert "data.path" in error_of(None, ["--data.dataset=text"])
    assert load_config(TrainProgram, None, ["--data.dataset=text", "--data.path=corpus.txt"]).data.path == "corpus.txt"


# --- writing --------------------------------------------------------------------------------


def odd_config() -> TrainProgram:
    cfg = load_config(TrainProgram, None, ["--model.preset=small", "--training.task=ar", "--debug.deterministic=true"])
    cfg.job.description = 'quote " backslash \\ newline \n tab \t nul \x00 del \x7f unicode é✓ \U0001f600'
    cfg.job.name = "it's"
    cfg.optim.lr = 0.1 + 0.2  # not exactly 0.3: the float must survive bit for bit
    cfg.optim.eps = 5e-324
    cfg.optim.weight_decay = 1e-300
    cfg.training.max_grad_norm = 1e300
    cfg.diffusion.eps = 1 / 3
    return cfg


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = odd_config()
    text = config_to_toml(cfg)
    assert tomllib.loads(text) == config_to_dict(cfg)
    assert load_config(TrainProgram, write(tmp_path, text)) == cfg
    assert config_to_dict(cfg)["job"]["name"] == "it's"


def test_save_config_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "run" / "config.toml"
    save_config(TrainProgram(), path)
    cfg = odd_config()
    save_config(cfg, path)  # replaces the existing file
    assert load_config(TrainProgram, path) == cfg
    assert os.listdir(path.parent) == ["config.toml"]  # no temp file left behind


def test_save_config_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    save_config(TrainProgram(), path)
    before = path.read_text()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_config(odd_config(), path)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["config.toml"]


# --- command line ---------------------------------------------------------------------------


def test_parse_cli_config_print_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nsteps = 5\n")
    args = parse_cli(TrainProgram, ["--config", str(path), "--print-config", "--training.global_batch_size", "8"])
    assert isinstance(args, CliArgs)
    assert (args.config_path, args.print_config) == (str(path), True)
    assert (args.config.training.steps, args.config.training.global_batch_size) == (5, 8)


def test_parse_cli_config_equals_form(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nsteps = 5\n")
    args = parse_cli(TrainProgram, [f"--config={path}", "--training.steps=6"])
    assert (args.config_path, args.print_config, args.config.training.steps) == (str(path), False, 6)


def test_parse_cli_empty() -> None:
    assert parse_cli(TrainProgram, []) == CliArgs(TrainProgram(), None, False)


@pytest.mark.parametrize("arg", ["--bogus", "stray", "-x", "--print-config=yes"])
def test_parse_cli_rejects_unknown_arguments(arg: str) -> None:
    with pytest.raises(ConfigError, match=f"unrecognized argument '{arg}'"):
        parse_cli(TrainProgram, [arg])


def test_parse_cli_config_needs_value() -> None:
    with pytest.raises(ConfigError, match="--config needs a value"):
        parse_cli(TrainProgram, ["--config"])


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_key(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_cli(TrainProgram, ["--training.steps=abc", flag], description="Train a model.")  # help wins over later errors
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "Train a model." in out
    for section, table in config_to_dict(TrainProgram()).items():
        for key in table:
            assert f"--{section}.{key} " in out
    line = next(line for line in out.splitlines() if "--training.task " in line)
    assert line.split()[1:] == ['"mdlm"', '"mdlm"|"ar"|"nce"']  # default, then type (the choices can be long)
    assert next(line for line in out.splitlines() if "--training.steps " in line).split()[1:] == ["1000", "int"]
    keys = out.split("config keys (default, type):\n")[1].splitlines()
    assert max(map(len, keys)) <= 100  # long choices wrap; no column is padded to the longest of them
    fault = keys.index(next(k for k in keys if "--debug.fault " in k))
    assert "".join(k.strip() for k in keys[fault:fault + 3]).endswith('"disk_full"|"write_refused"')


def test_entry_point_switches_are_taken_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_cli(TrainProgram, ["--overwrite", "--training.steps=3"], switches={"--overwrite": "replace existing results"})
    assert args.switches == {"--overwrite"} and args.config.training.steps == 3
    assert parse_cli(TrainProgram, [], switches={"--overwrite": "x"}).switches == frozenset()
    with pytest.raises(ConfigError, match="unrecognized argument .--overwrite.; expected --config PATH, --print-config, --section"):
        parse_cli(TrainProgram, ["--overwrite"])  # only where the entry point has it
    with pytest.raises(SystemExit):
        parse_cli(TrainProgram, ["--help"], switches={"--overwrite": "replace existing results"})
    assert "  --overwrite          replace existing results\n" in capsys.readouterr().out


# --- exit helper ----------------------------------------------------------------------------


class DataMissing(RuntimeError):
    user_error = True


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConfigError("config file not found: x.toml"), "error: config file not found: x.toml"),
        (DataMissing("no shards in /data\nset EDLM_DATA_DIR"), "error: no shards in /data set EDLM_DATA_DIR"),
    ],
)
def test_exit_on_user_error(exc: Exception, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    @exit_on_user_error
    def main() -> None:
        raise exc

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == expected + "\n"
    assert "Traceback" not in err


def test_exit_on_user_error_passes_results_and_bugs_through() -> None:
    @exit_on_user_error
    def ok(x: int) -> int:
        return x + 1

    @exit_on_user_error
    def buggy() -> None:
        raise KeyError("bug")

    assert ok(1) == 2
    assert ok.__name__ == "ok"
    with pytest.raises(KeyError):
        buggy()


# --- one root per program, and the keys from before ------------------------------------------

PROGRAM_ROOTS = (TrainProgram, SampleProgram, EvalProgram)
FOREIGN = {TrainProgram: "eval.datasets", SampleProgram: "training.steps", EvalProgram: "sample.steps"}


@pytest.mark.parametrize("root", PROGRAM_ROOTS)
def test_a_program_refuses_the_keys_of_another_in_one_line(root: type, tmp_path: Path) -> None:
    name = FOREIGN[root]
    section, key = name.split(".")
    for args in [(None, [f"--{name}=1"]), (write(tmp_path, f"[{section}]\n{key} = 1\n"),)]:
        with pytest.raises(ConfigError) as info:
            load_config(root, *args)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"unknown config key '{name}'")
        assert f"not of {root.PROGRAM}" in message and "valid: job, runtime" in message
    assert "did you mean 'eval'?" in str(pytest.raises(ConfigError, load_config, EvalProgram, None, ["--evl.datasets=x"]).value)


def test_old_keys_in_a_file_or_on_the_command_line_are_read_at_their_new_places(tmp_path: Path) -> None:
    old = write(tmp_path, '[training]\ndevice = "cpu"\nmixed_precision = "bf16"\ntask = "nce"\n'
                          '[parallel]\nbackend = "gloo"\ncollective_timeout_s = 30\n'
                          '[energy]\ndenoiser = "runs/tiny"\ntime_conditioning = true\nnum_negatives = 2\n'
                          'ess_candidates = 4\nmax_batch = 8\n')
    cfg = load_config(TrainProgram, old, ["--energy.ess_sequences=3", "--parallel.backend=nccl"])
    assert (cfg.runtime.device, cfg.runtime.mixed_precision, cfg.runtime.backend) == ("cpu", "bf16", "nccl")
    assert cfg.runtime.collective_timeout_s == 30 and cfg.training.task == "nce"
    assert (cfg.nce.denoiser, cfg.nce.time_conditioning, cfg.nce.num_negatives) == ("runs/tiny", True, 2)
    assert (cfg.nce.ess_candidates, cfg.nce.ess_sequences, cfg.nce.max_batch) == (4, 3, 8)
    sample = load_config(SampleProgram, write(tmp_path, '[training]\ndevice = "cpu"\n[energy]\nkind = "ar"\n'
                                                         'denoiser = "runs/tiny"\n', "sample.toml"))
    assert (sample.runtime.device, sample.energy.kind, sample.sample.checkpoint) == ("cpu", "ar", "runs/tiny")
    scored = load_config(EvalProgram, None, ["--energy.denoiser=runs/tiny"])
    assert scored.eval.denoiser == "runs/tiny"  # the one key of the MDLM an energy corrects, per program
    message = str(pytest.raises(ConfigError, load_config, EvalProgram, None, ["--energy.num_negatives=2"]).value)
    assert message == ("config key energy.num_negatives on the command line is now nce.num_negatives (a key of "
                       "edlm_dist.train), which edlm_dist.eval does not read")


def old_run_config(cfg: TrainProgram) -> str:
    """`cfg` as the config.toml of a run folder written before each program had its own root."""
    tables = config_to_dict(cfg)
    runtime, nce = tables.pop("runtime"), tables.pop("nce")
    tables["training"].update(device=runtime["device"], mixed_precision=runtime["mixed_precision"])
    tables["parallel"].update(backend=runtime["backend"], collective_timeout_s=runtime["collective_timeout_s"])
    tables["energy"] = {"kind": "nce", "checkpoint": "", **nce}
    tables["eval"] = {"checkpoint": "", "datasets": "val", "num_proposals": 8}
    return "\n".join(f"[{section}]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"').replace("True", "true")
                                                .replace("False", "false") for k, v in table.items())
                     for section, table in tables.items())


def test_an_old_run_folder_config_loads_and_resumes_without_changes(tmp_path: Path) -> None:
    from edlm_dist.config import check_resume, load_run_config
    from edlm_dist.runs import RunFolder

    cfg = load_config(TrainProgram, None, ["--training.task=nce", "--nce.denoiser=runs/tiny", "--runtime.device=cpu",
                                           "--nce.time_conditioning=true", "--runtime.collective_timeout_s=60"])
    (tmp_path / "config.toml").write_text(old_run_config(cfg))
    assert load_run_config(tmp_path / "config.toml") == cfg
    assert RunFolder(tmp_path).stored_config() == cfg
    assert check_resume(RunFolder(tmp_path).stored_config(), cfg, str(tmp_path)) == []
    with pytest.raises(ConfigError, match="nce.time_conditioning cannot change"):
        check_resume(load_run_config(tmp_path / "config.toml"), load_config(TrainProgram, None, [
            "--training.task=nce", "--nce.denoiser=runs/tiny"]), str(tmp_path))
    with pytest.raises(ConfigError, match="unknown config key 'energy.kind' .*: a key of edlm_dist.sample and "
                                          "edlm_dist.eval, not of edlm_dist.train"):
        load_config(TrainProgram, tmp_path / "config.toml")  # given as --config: what training never read is refused


def entry_point_output(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) if "--help" in argv else contextlib.nullcontext():
        main(argv)  # type: ignore[operator]
    return capsys.readouterr().out


def test_checkpoint_names_the_runs_whose_models_sample_and_eval_read(capsys: pytest.CaptureFixture[str]) -> None:
    from edlm_dist.eval import main as evaluate
    from edlm_dist.sample import main as sample

    printed = tomllib.loads(entry_point_output(sample, ["--checkpoint", "runs/tiny", "--print-config"], capsys))
    assert printed["sample"]["checkpoint"] == "runs/tiny"  # one key per program: <program section>.checkpoint
    printed = tomllib.loads(entry_point_output(evaluate, ["--checkpoint=runs/a,runs/b", "--print-config"], capsys))
    assert printed["eval"]["checkpoint"] == "runs/a,runs/b"
    for main in (sample, evaluate):
        line = next(l for l in entry_point_output(main, ["--help"], capsys).splitlines() if "--checkpoint VALUE" in l)
        assert "whose model" in line


@pytest.mark.parametrize("root", PROGRAM_ROOTS)
def test_help_of_each_program_lists_only_its_sections(root: type, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    main = importlib.import_module(root.PROGRAM).main
    keys = entry_point_output(main, ["--help"], capsys).split("config keys (default, type):\n")[1]
    sections = {line.split()[0][2:].split(".")[0] for line in keys.splitlines() if line.startswith("  --")}
    assert sections == set(config_to_dict(root()))


@pytest.mark.parametrize("root", (SampleProgram, EvalProgram))
def test_only_training_names_a_run_and_sets_intervals(root: type) -> None:
    """[job] and [metrics] of sampling and evaluation hold only what they read: a run is named by
    training's job.dump_folder/job.name, their results by --out."""
    output = f"{root.PROGRAM.split('.')[1]}.output (--out)"
    for name, hint in (("job.name", f"{root.PROGRAM} uses {output} instead"),
                       ("job.dump_folder", f"{root.PROGRAM} uses {output} instead"),
                       ("metrics.log_interval", "valid: metrics.tensorboard, metrics.progress")):
        message = str(pytest.raises(ConfigError, load_config, root, None, [f"--{name}=1"]).value)
        assert message.startswith(f"unknown config key '{name}'") and "a key of edlm_dist.train" in message
        assert message.endswith(hint)
    cfg = load_config(root, None, ["--job.seed=3", "--metrics.progress=false"])
    assert (cfg.job.seed, cfg.metrics.progress) == (3, False)
    trained = load_config(TrainProgram, None, ["--job.name=x", "--metrics.log_interval=3"])
    assert (trained.job.name, trained.metrics.log_interval) == ("x", 3)
