"""Every config and option mistake is refused in one line before compute is spent: sections given
as scalars, non-finite numbers, integers beyond int32 or uint32, sizes that cannot fit in memory,
growth requests that grow nothing, and `--out` paths that cannot be written.

Each CLI check asserts exit code 2, one line on stderr naming the culprit, no traceback and
nothing written at --out. Checks meant to come before any loading are given a source that does
not exist (or has no checkpoint), so the test fails if the order regresses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from laggrow import resources
from laggrow.cli import app
from laggrow.config import ModelConfig, load_run_config, run_config_from_dict
from laggrow.errors import LaggrowError
from laggrow.pool.spec import pool_config_from_dict

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
TINY = CONFIGS / "tiny.yaml"


def refused(args, out: Path | None, expected: str, env: dict | None = None) -> str:
    """Run `laggrow ARGS` in-process; insist on exit 2, one stderr line holding `expected`, and
    nothing at `out`. Returns the line."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    if out is not None:
        assert not out.exists(), "nothing written at --out"
        assert not list(out.parent.glob(f".{out.name}*")), "no staging left behind"
    return lines[0]


def usage_error(args, option: str) -> None:
    """Typer's own refusal of a bad option value: exit 2, naming the option, no traceback."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


# ---- 1. sections given as scalars ---------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("model: 5\n", "section 'model' must be a mapping of keys to values, got 5"),
    ("train: [1]\n", "section 'train' must be a mapping of keys to values, got [1]"),
    ("data: 0\n", "section 'data' must be a mapping"),  # `or {}` used to take 0 for empty
    ("model: [[n_layers, 2]]\n", "section 'model' must be a mapping"),  # dict() used to accept it
    ("model: true\n", "section 'model' must be a mapping"),
])
def test_a_section_given_as_a_scalar_is_one_line(tmp_path, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    refused(["train", config, "--out", tmp_path / "out"], tmp_path / "out", expected)


def test_an_empty_section_is_an_empty_mapping_also_under_set(tmp_path):
    config = tmp_path / "c.yaml"
    text = TINY.read_text()
    config.write_text(text[:text.index("model:")] + "model:\n" + text[text.index("data:"):])  # an empty `model:`
    cfg = load_run_config(config, ["model.n_layers=3"])
    assert cfg.model.n_layers == 3 and cfg.model.d_model == ModelConfig.d_model


def test_a_top_level_that_is_not_a_mapping_is_one_line():
    with pytest.raises(LaggrowError, match="expected a mapping of sections"):
        run_config_from_dict([1, 2], where="config.json")


# ---- 2. non-finite numbers ----------------------------------------------------------------------


NON_FINITE = ["train.lr=.inf", "train.weight_decay=.inf", "model.ln_eps=.inf", "train.lr=.nan",
              "train.beta1=.nan", "train.beta2=-.inf", "train.dropout=.nan", "train.min_lr_ratio=.nan",
              "data.heldout_fraction=.nan", "train.grad_clip=.nan", "train.grad_clip=.inf",
              "train.lr=1e400", "train.weight_decay=" + "9" * 400]  # an int beyond any float


@pytest.mark.parametrize("setting", NON_FINITE)
def test_non_finite_numbers_are_refused(tmp_path, setting):
    key = setting.split("=")[0]
    refused(["train", TINY, "--set", setting, "--out", tmp_path / "out"], tmp_path / "out",
            f"{key}: expected a finite number")


# ---- 3. integers: seeds are uint32, steps int32 -------------------------------------------------


@pytest.mark.parametrize("setting, expected", [
    ("train.seed=-1", "train.seed: expected an integer >= 0, got -1"),
    ("data.split_seed=-1", "data.split_seed: expected an integer >= 0, got -1"),
    ("train.seed=1e20", "train.seed: expected an integer, got 1e+20"),
    ("train.seed=100000000000000000000", "train.seed: expected an integer <= 2**32 - 1"),
    ("train.seed=4294967296", "train.seed: expected an integer <= 2**32 - 1"),  # jax wraps it to 0
    ("train.steps=3000000000", "train.steps: expected an integer <= 2**31 - 1"),
    ("train.eval_every=2147483648", "train.eval_every: expected an integer <= 2**31 - 1"),
    ("train.log_every=2147483648", "train.log_every: expected an integer <= 2**31 - 1"),
    ("train.checkpoint_every=2147483648", "train.checkpoint_every: expected an integer <= 2**31 - 1"),
    ("train.warmup_steps=3000000000", "train.warmup_steps: expected an integer in [0, train.steps=40]"),
    ("train.hold_steps=39", "train.hold_steps: expected an integer in [0, train.steps - warmup_steps = 35]"),
    ("train.hold_steps=-1", "train.hold_steps: expected an integer in [0, train.steps - warmup_steps = 35]"),
    ("train.seed=true", "train.seed: expected an integer, got True"),
    ("data.bpe_vocab_size=2000000", "data.bpe_vocab_size: expected an integer <= 1048576"),
])
def test_integers_out_of_range_are_one_line(tmp_path, setting, expected):
    refused(["train", TINY, "--set", setting, "--out", tmp_path / "out"], tmp_path / "out", expected)


def test_the_largest_seed_and_step_count_are_accepted():
    cfg = load_run_config(TINY, ["train.seed=4294967295", "data.split_seed=4294967295",
                                 "train.steps=2147483647", "train.eval_every=2147483647"])
    assert cfg.train.seed == 4294967295 and cfg.train.steps == 2147483647


def test_a_huge_value_is_shown_cut_short():
    with pytest.raises(LaggrowError) as err:
        load_run_config(TINY, ["train.seed=" + "7" * 5000])  # Python refuses to print such an int
    assert len(str(err.value)) < 300 and "\n" not in str(err.value)


# ---- 4. memory-sized values ---------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["model.n_layers=100000", "train.batch_size=1000000000",
                                     "model.d_model=1048576", "data.seq_len=1000000", "model.d_ff=1000000000"])
def test_a_run_that_cannot_fit_in_memory_is_one_line(tmp_path, setting):
    line = refused(["train", TINY, "--set", setting, "--out", tmp_path / "out"], tmp_path / "out",
                   "training needs about")
    assert setting in line and "this machine has" in line and "expected a model and batch that fit" in line


def test_laggrow_memory_bounds_what_laggrow_counts_on(tmp_path, monkeypatch):
    monkeypatch.setenv(resources.MEMORY_ENV, "1M")
    line = refused(["train", TINY, "--out", tmp_path / "out"], tmp_path / "out", "LAGGROW_MEMORY allows 1.0 MiB")
    assert "needs about 2.8 MiB" in line
    monkeypatch.setenv(resources.MEMORY_ENV, "a lot")
    refused(["train", TINY, "--out", tmp_path / "out"], tmp_path / "out", "LAGGROW_MEMORY='a lot': expected")


def test_the_estimate_is_the_documented_arithmetic():
    # 1 layer, d 8, 2 heads, d_ff 16, vocab 16, 4 positions (learned, untied): by hand,
    # params 16*8 + (4*8 + 4*64 + 2*8*16) + 2*8 + 4*8 + 8*16 = 848, state 16 x 848 = 13568;
    # activations: 8 tokens x (8*8 + 2*16) x 4 B + 2*2*16 x 4 B attention = 3328 for the layer,
    # logits 8 x 16 x 8 B = 1024, one eval batch 2*4*16*4 + 2*2*16*4 = 768, eval windows
    # 1*2*5 x 12 B = 120: 5240.
    cfg = run_config_from_dict({
        "model": {"n_layers": 1, "d_model": 8, "n_heads": 2, "d_ff": 16, "vocab_size": 16},
        "data": {"seq_len": 4, "eval_batches": 1, "eval_batch_size": 2}, "train": {"batch_size": 2}})
    assert cfg.model.n_params() == 848
    assert resources.training_bytes(cfg) == (13568 + 5240, 13568, 5240)


def test_the_estimate_stays_below_what_xla_allocates():
    """The estimate is meant as a lower bound, so that it never refuses a run that would fit:
    compare it with XLA's own account of a compiled train step (arguments, outputs, temporaries)."""
    import jax
    import jax.numpy as jnp

    from laggrow import model, train

    cfg = load_run_config(TINY, ["train.batch_size=16", "data.seq_len=64"])
    optimizer = train.make_optimizer(cfg.train)
    state = jax.eval_shape(lambda p: train.init_state(p, optimizer), model.param_shapes(cfg.model))
    batch = jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.data.seq_len + 1), jnp.int32)
    compiled = jax.jit(train.make_train_step(cfg.model, cfg.train)).lower(state, batch).compile()
    stats = compiled.memory_analysis()
    xla = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    total, _, activations = resources.training_bytes(cfg)
    assert activations > 0.25 * xla, "still an estimate worth the name"
    assert total < xla


@pytest.mark.parametrize("name", ["tiny.yaml", "small.yaml", "gpu.yaml"])
def test_the_shipped_configs_fit_a_24_gib_machine(monkeypatch, name):
    monkeypatch.setenv(resources.MEMORY_ENV, "24G")
    cfg = load_run_config(CONFIGS / name)
    if cfg.data.tokenizer == "bpe":  # the vocabulary the tokenizer will give the model
        import dataclasses
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=cfg.data.bpe_vocab_size))
    cfg.validate()
    if name == "gpu.yaml":  # meant for one accelerator: about 18 GiB by the estimate
        assert 16 * 2**30 < resources.training_bytes(cfg)[0] < 20 * 2**30


def test_a_pool_counts_its_candidates_and_its_chunk(monkeypatch, tmp_path):
    source = load_run_config(TINY)
    raw = {"source": str(tmp_path), "target": {"n_layers": 3}, "strategies": ["stack", "zero_top"],
           "seeds": list(range(10)), "lag_steps": 2, "final_steps": 4, "eval_points": 3, "chunk_size": 0}
    target = pool_config_from_dict(raw).target_run_config(source)  # fits this machine
    all_at_once = resources.training_bytes(target, candidates=20, together=20)[0]
    one_at_a_time = resources.training_bytes(target, candidates=20, together=1)[0]
    assert one_at_a_time < all_at_once
    monkeypatch.setenv(resources.MEMORY_ENV, str((one_at_a_time + all_at_once) // 2))
    with pytest.raises(LaggrowError, match="for 20 candidates, 20 at a time, needs about .*fewer candidates"):
        pool_config_from_dict(raw).target_run_config(source)
    pool_config_from_dict({**raw, "chunk_size": 1}).target_run_config(source)
    # the default, auto, sizes its chunks to the memory: only one candidate at a time must fit
    auto = dict(raw)
    del auto["chunk_size"]
    assert pool_config_from_dict(auto).chunk_size == "auto"
    pool_config_from_dict(auto).target_run_config(source)


# ---- pools: every key checked when the pool is read, before its source is -----------------------


POOL = {"source": "/nonexistent/run", "target": {"n_layers": 3}, "strategies": ["stack", "zero_top"],
        "seeds": [0], "lag_steps": 2, "final_steps": 4, "eval_points": 3}


@pytest.mark.parametrize("changes, expected", [
    ({"target": 5}, "target: expected a mapping, got 5"),
    ({"train": 5}, "train: expected a mapping, got 5"),
    ({"train": {"lr": math.inf}}, "train.lr: expected a finite number, got inf"),
    ({"train": {"lr": -1}}, "train.lr: expected a number > 0"),
    ({"train": {"seed": -1}}, "train.seed: expected an integer >= 0"),
    ({"train": {"steps": 9}}, "train.steps: expected a train setting"),
    ({"strategies": [{"name": "stack", "lr_scale": math.nan}]}, "lr_scale: expected a finite number, got nan"),
    ({"seeds": [-1]}, "seeds: expected seeds in [0, 2**32 - 1]"),
    ({"seeds": [2**32]}, "seeds: expected seeds in [0, 2**32 - 1]"),
    ({"eval_points": 3000000000}, "eval_points: expected an integer in [2, 5]"),
    ({"eval_points": 6}, "eval_points: expected an integer in [2, 5]"),  # one per step of [0, 4]
    ({"final_steps": 3000000000, "lag_steps": 2}, "final_steps: expected an integer in [1, 2**31 - 1]"),
    ({"target": {"n_layer": 3}}, "target.n_layer: unknown key (did you mean 'n_layers'?)"),
    ({"target": {"n_layers": math.inf}}, "target.n_layers: expected an integer, got inf"),
    ({"chunk_size": -1}, "chunk_size: expected an integer >= 0"),
])
def test_bad_pools_are_one_line_before_the_source_is_read(tmp_path, changes, expected):
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump({**POOL, **changes}))  # safe_dump writes .inf and .nan
    refused(["probe", pool, "--out", tmp_path / "out"], tmp_path / "out", expected)


def test_a_pool_that_is_not_a_mapping_is_one_line():
    with pytest.raises(LaggrowError, match="expected a mapping of pool keys"):
        pool_config_from_dict([1])


def test_a_finite_lr_scale_times_a_finite_lr_can_still_overflow():
    raw = {**POOL, "strategies": [{"name": "stack", "lr_scale": 1e300}], "train": {"lr": 1e300}}
    with pytest.raises(LaggrowError, match="is not a finite learning rate"):
        pool_config_from_dict(raw).target_run_config(load_run_config(TINY))


# ---- laggrow run: the experiment's own keys, its pool and its correlate options -----------------


@pytest.fixture
def experiment(tmp_path) -> Path:
    text = (CONFIGS / "tiny_experiment.yaml").read_text().replace("base: tiny.yaml", f"base: {TINY}")
    path = tmp_path / "e.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("setting, expected", [
    ("pool=5", "pool: expected a mapping, got 5"),
    ("correlate=5", "correlate: expected a mapping, got 5"),
    ("base_set=5", "base_set: expected a list, got 5"),
    ("correlate.bootstrap=100000000", "correlate.bootstrap: expected a number of resamples in [0, 100000]"),
    ("correlate.seed=-1", "correlate.seed: expected an integer in [0, 2**32 - 1]"),
    ("correlate.threshold=.nan", "correlate.threshold: expected a finite number"),
    ("correlate.regret_tol=.inf", "correlate.regret_tol: expected a finite number"),
])
def test_bad_experiment_keys_are_one_line(tmp_path, experiment, setting, expected):
    refused(["run", experiment, "--out", tmp_path / "ex", "--set", setting], tmp_path / "ex", expected)


@pytest.mark.parametrize("setting, expected", [
    ("pool.seeds=[-1]", "pool.seeds: expected seeds in [0, 2**32 - 1]"),
    ("pool.train={lr: .inf}", "pool.train.lr: expected a finite number"),
])
def test_a_bad_pool_under_run_is_refused_before_the_base_trains(tmp_path, experiment, setting, expected):
    refused(["run", experiment, "--out", tmp_path / "ex", "--set", setting], tmp_path / "ex", expected)


def test_the_experiments_bootstrap_is_checked_against_memory(tmp_path, experiment, monkeypatch):
    # room for the base (2.8 MiB) and the pool (4 candidates), not for the bootstrap (~150 MiB)
    monkeypatch.setenv(resources.MEMORY_ENV, "64M")
    refused(["run", experiment, "--out", tmp_path / "ex", "--set", "correlate.bootstrap=100000"],
            tmp_path / "ex", "correlate.bootstrap: 100000 resamples of 4 strategies x")


# ---- laggrow correlate ----------------------------------------------------------------------------


def _pool_dir(directory: Path) -> Path:
    """Hand-made records of five strategies, two seeds, four steps, with finals."""
    directory.mkdir()
    records = [{"candidate": 2 * i + seed, "strategy": name, "seed": seed, "step": step,
                "eval_loss": 3.0 - step * 0.1 * (i + 1) + 0.01 * seed, "train_loss": None,
                "tokens": step, "flops": float(step), "diverged": False}
               for i, name in enumerate("ABCDE") for seed in (0, 1) for step in (0, 1, 2, 4)]
    (directory / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (directory / "probe.json").write_text(json.dumps({"lag_steps": 1, "final_steps": 4, "candidates": []}))
    return directory


def _no_outputs(directory: Path) -> None:
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == ["curves.jsonl", "probe.json"]
    assert not list(directory.glob(".*.tmp"))


def test_correlate_bounds_its_bootstrap_and_seed(tmp_path, monkeypatch):
    pool = _pool_dir(tmp_path / "pool")
    refused(["correlate", pool, "--bootstrap", "100000000"], None,
            "bootstrap resamples: expected a number of resamples in [0, 100000], got 100000000")
    usage_error(["correlate", pool, "--regret-tol", "nan"], "--regret-tol")
    usage_error(["correlate", pool, "--seed", "-1"], "--seed")
    usage_error(["correlate", pool, "--seed", str(2**32)], "--seed")
    monkeypatch.setenv(resources.MEMORY_ENV, "64M")
    line = refused(["correlate", pool, "--bootstrap", "100000"], None,
                   "bootstrap resamples: 100000 resamples of 5 strategies x 4 steps need about")
    fits = int(line.rsplit("expected at most ", 1)[1])
    assert 1000 < fits < 100000
    _no_outputs(pool)
    fitting = CliRunner().invoke(app, ["correlate", str(pool), "--bootstrap", str(fits), "--json"])
    assert fitting.exit_code == 0, fitting.output  # the count it names does pass


def test_correlate_as_a_library_checks_what_typer_would(tmp_path):
    from laggrow import analysis

    curves = analysis.load_curves(_pool_dir(tmp_path / "pool"))
    for kwargs, message in [({"regret_tol": math.nan}, "regret tolerance nan: expected a finite number"),
                            ({"regret_tol": math.inf}, "regret tolerance inf"),
                            ({"seed": -1}, "bootstrap seed -1: expected an integer in"),
                            ({"seed": 2**32}, "bootstrap seed 4294967296"),
                            ({"n_boot": -1}, "expected a number of resamples in [0, 100000], got -1")]:
        with pytest.raises(LaggrowError, match=message.replace("[", r"\[")):
            analysis.correlate(curves, **kwargs)


# ---- laggrow grow --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tiny_base_run) -> Path:
    return tiny_base_run


@pytest.fixture
def weightless(tmp_path, source) -> Path:
    """A copy of the source run without its checkpoints: a check that needs no weights must fire
    before the missing weights are noticed."""
    copy = tmp_path / "weightless"
    copy.mkdir()
    for name in os.listdir(source):
        if (source / name).is_file():
            shutil.copy(source / name, copy / name)
    return copy


NOISY = ["--strategy", "stack_noise", "--set", "model.n_layers=3", "--noise"]
WIDE = ["--strategy", "fusion", "--set", "model.d_model=64", "--set", "model.n_heads=8", "--set", "model.d_ff=256"]


@pytest.mark.parametrize("args, expected", [
    ([*NOISY, "nan"], "option noise: expected a number >= 0 and finite, got nan"),
    ([*NOISY, "inf"], "option noise: expected a number >= 0 and finite, got inf"),
    (["--strategy", "stack", "--set", "model.n_layers=2"],
     "target (--set): expected a model larger than the source (2 layers"),
    (["--strategy", "hypercloning", "--set", "model.d_model=32"], "expected a model larger than the source"),
    (["--strategy", "stack", "--set", "model.n_layers=3", "--set", "train.lr=.inf"],
     "train.lr: expected a finite number"),
    (["--strategy", "stack_middle", "--set", "model.n_layers=3", "--block", "0"],
     "option block: expected an integer >= 1"),
    ([*WIDE, "--partner", "/nonexistent/partner"], "--partner /nonexistent/partner: does not exist"),
])
def test_grow_refuses_before_loading_weights(tmp_path, weightless, args, expected):
    refused(["grow", "--from", weightless, *args, "--out", tmp_path / "g"], tmp_path / "g", expected)


def test_grow_checks_out_before_the_source(tmp_path):
    nowhere = tmp_path / "no-source"
    layers = ["--strategy", "stack", "--set", "model.n_layers=3"]
    (tmp_path / "taken").mkdir()
    refused(["grow", "--from", nowhere, *layers, "--out", tmp_path / "taken"], None, "already exists")
    (tmp_path / "file").write_text("x")
    refused(["grow", "--from", nowhere, *layers, "--out", tmp_path / "file"], None, "already exists")
    refused(["grow", "--from", nowhere, *layers, "--out", tmp_path / "file" / "g"], None,
            "is a file, not a directory")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        refused(["grow", "--from", nowhere, *layers, "--out", tmp_path / "ro" / "g"], tmp_path / "ro" / "g",
                "is not writable")


def test_grow_seed_is_a_uint32(tmp_path, weightless):
    layers = ["grow", "--from", weightless, "--strategy", "stack", "--set", "model.n_layers=3"]
    usage_error([*layers, "--seed", "1e20", "--out", tmp_path / "g"], "--seed")
    usage_error([*layers, "--seed", str(2**32), "--out", tmp_path / "g"], "--seed")
    assert not (tmp_path / "g").exists()


def test_grow_into_a_model_too_large_for_memory_is_refused_at_once(tmp_path, weightless):
    """`--set model.n_layers=100000000` used to hang building the target's parameters. A real
    process, with a timeout, so a regression fails instead of hanging the suite."""
    out = tmp_path / "g"
    proc = subprocess.run([sys.executable, "-m", "laggrow", "grow", "--from", str(weightless), "--strategy", "stack",
                           "--set", "model.n_layers=100000000", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.n_layers=100000000" in lines[0] and "needs about" in lines[0], proc.stderr
    assert not out.exists()


# ---- issue 20: what a new user still hit ---------------------------------------------------------


def test_a_key_given_twice_in_a_yaml_mapping_is_one_line_naming_it(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(TINY.read_text().replace("  lr: 0.003\n", "  lr: 0.003\n  lr: 0.1\n"))
    line = refused(["train", config, "--out", tmp_path / "out"], tmp_path / "out", "key 'lr' appears twice")
    assert "first at line" in line
    # a merge key's values may still be overridden: that is what merging is for
    merged = tmp_path / "m.yaml"
    merged.write_text("shared: &base {lr: 0.003, steps: 10}\ntrain:\n  <<: *base\n  lr: 0.01\n")
    raw = yaml.safe_load(merged.read_text())
    from laggrow.config_engine import read_yaml

    assert read_yaml(merged)["train"] == {**raw["train"], "lr": 0.01}


@pytest.mark.parametrize("where", ["file", "set"])
def test_an_integer_of_thousands_of_digits_is_one_line_without_pythons_advice(tmp_path, where):
    digits = "7" * 5000
    config = tmp_path / "c.yaml"
    config.write_text(TINY.read_text() + (f"\nseedless: {digits}\n" if where == "file" else ""))
    sets = ["--set", f"train.steps={digits}"] if where == "set" else []
    line = refused(["train", config, "--out", tmp_path / "out", *sets], tmp_path / "out",
                   "an integer of 5000 digits")
    assert "set_int_max_str_digits" not in line


def test_a_set_value_that_is_not_yaml_is_refused_not_kept_as_text(tmp_path):
    refused(["train", TINY, "--out", tmp_path / "out", "--set", "train.lr=[1e-3"], tmp_path / "out",
            "--set 'train.lr=[1e-3': the value cannot be read as YAML")


def test_an_lr_scale_beyond_a_float32_learning_rate_is_one_line():
    raw = {**POOL, "strategies": ["stack", {"name": "zero_top", "lr_scale": 1e308}]}
    with pytest.raises(LaggrowError, match="pool strategy zero_top: lr_scale 1e.308 x train.lr 0.003 is not a finite "
                                           "learning rate .expected a product of at most 3.4e.38"):
        pool_config_from_dict(raw).target_run_config(load_run_config(TINY))


@pytest.mark.parametrize("label", ["a|b", "two\nlines", "tab\there"])
def test_a_label_that_would_break_the_reports_tables_is_one_line(tmp_path, label):
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump({**POOL, "strategies": ["stack", {"name": "zero_top", "label": label}]}))
    refused(["probe", pool, "--out", tmp_path / "out"], tmp_path / "out", "holds '|' or a line break")


def test_the_default_eval_points_fits_a_short_pool():
    short = {k: v for k, v in POOL.items() if k != "eval_points"}  # final_steps 4: at most 5 points
    assert pool_config_from_dict(short).eval_points == 5
    assert pool_config_from_dict({**short, "final_steps": 400}).eval_points == 16
    with pytest.raises(LaggrowError, match="eval_points: expected an integer in .2, 5."):  # given, still checked
        pool_config_from_dict({**short, "eval_points": 16})


def test_run_refuses_a_pool_of_fewer_than_three_strategies_before_training(tmp_path, experiment):
    refused(["run", experiment, "--out", tmp_path / "ex", "--set", "pool.strategies=[stack, zero_top]"],
            tmp_path / "ex", "pool.strategies: expected at least 3 strategies")


def test_an_experiments_base_is_read_from_the_experiment_files_directory(tmp_path, monkeypatch):
    # `cd / && laggrow run /path/to/configs/tiny_experiment.yaml` used to look for configs/tiny.yaml in /
    monkeypatch.chdir(tmp_path)
    refused(["run", CONFIGS / "tiny_experiment.yaml", "--out", tmp_path / "ex", "--set",
             "base_set=[model.n_layers=0]"], tmp_path / "ex", "model.n_layers: expected an integer >= 1")


@pytest.mark.parametrize("verb", ["train", "stack"])
def test_an_empty_out_is_refused_not_taken_for_the_working_directory(tmp_path, monkeypatch, verb):
    monkeypatch.chdir(tmp_path)
    config = TINY if verb == "train" else CONFIGS / "stack-tiny.yaml"
    refused([verb, config, "--out", ""], None, '--out: expected a directory path, got an empty string')
    assert list(tmp_path.iterdir()) == []


def test_until_beyond_the_runs_steps_is_refused(tmp_path):
    refused(["train", TINY, "--out", tmp_path / "out", "--until", "1000"], tmp_path / "out",
            "--until: expected a step in [1, train.steps=40], got 1000")


def test_a_dangling_link_as_out_is_named_as_one(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    refused(["train", TINY, "--out", link], None, f"--out {link}: a symbolic link to {tmp_path / 'gone'}, which "
                                                  "does not exist")


def test_out_inside_the_source_run_is_refused(tmp_path, source, weightless):
    inside = weightless / "grown"
    refused(["grow", "--from", weightless, "--strategy", "stack", "--set", "model.n_layers=3", "--out", inside],
            inside, f"--out {inside}: inside the laggrow run {weightless}")
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump({**POOL, "source": str(source)}))
    inside = source / "pool"
    refused(["probe", pool, "--out", inside], inside, f"--out {inside}: inside the laggrow run {source}")


def test_run_out_inside_a_run_is_refused(tmp_path, experiment, weightless):
    inside = weightless / "ex"
    refused(["run", experiment, "--out", inside], inside, f"out {inside}: inside the laggrow run {weightless}")


def test_a_pool_directory_as_a_pool_source_is_named_as_one(tmp_path, weightless):
    (weightless / "pool.json").write_text("{}")  # a config.json and a pool.json: what a probe writes
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump({**POOL, "source": str(weightless)}))
    line = refused(["probe", pool, "--out", tmp_path / "out"], tmp_path / "out",
                   "a pool directory (laggrow probe), not a training run")
    assert "unfinished" not in line and "laggrow train" in line


@pytest.mark.skipif(Path("/proc/sys/vm/overcommit_memory").exists()
                    and Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
                    reason="with overcommit always on, the kernel grants the allocation and kills the process later")
def test_a_real_out_of_memory_is_one_line_naming_what_ran_out_and_what_to_lower(tmp_path):
    # LAGGROW_MEMORY overstating the machine lets a 64 GiB model through the estimate; XLA's own
    # out-of-memory error (a JaxRuntimeError of some hundred lines) is the one line instead
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", str(TINY), "--out", str(out), "--set", f"model.d_ff={2**28}"],
                                env={resources.MEMORY_ENV: "1000T"})
    # after the run's header: one error line, no traceback, nothing left at --out
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "out of memory on the " in errors[0] and "68719476736 bytes" in errors[0]
    assert "lower train.batch_size, the model's size" in errors[0] and "LAGGROW_MEMORY=1000T may overstate" in errors[0]
    assert not out.exists()
