"""`laggrow train` from the command line: help, and one-line errors for bad input."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from laggrow.cli import app

runner = CliRunner()

GOOD = """
model: {n_layers: 1, d_model: 16, n_heads: 2, d_ff: 32}
data: {corpus: CORPUS, seq_len: 16, eval_batches: 1, eval_batch_size: 2}
train: {steps: 2, batch_size: 2, warmup_steps: 1, eval_every: 2}
"""


def _write(tmp_path, text, corpus="kjv"):
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("CORPUS", str(corpus)))
    return path


def _fails(tmp_path, args, expected):
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", *map(str, args), "--out", str(out)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists(), "nothing half-written"


BAD_CONFIGS = {
    "malformed YAML": ("model: {n_layers: [1,\n", "malformed YAML at line"),
    "unknown key": (GOOD.replace("d_ff: 32", "d_ff: 32, dff: 3"), "model.dff: unknown key"),
    "unknown section": (GOOD + "optim: {}\n", "unknown section 'optim'"),
    "wrong type": (GOOD.replace("n_layers: 1", "n_layers: two"), "model.n_layers: expected an integer"),
    "heads do not divide": (GOOD.replace("d_model: 16", "d_model: 17"), "model.d_model: expected a multiple"),
    "zero steps": (GOOD.replace("steps: 2,", "steps: 0,"), "train.steps: expected an integer >= 1"),
    "bad tokenizer": (GOOD.replace("seq_len: 16", "seq_len: 16, tokenizer: words"), "data.tokenizer"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2(tmp_path, name):
    text, expected = BAD_CONFIGS[name]
    _fails(tmp_path, [_write(tmp_path, text)], expected)


def test_missing_config_file(tmp_path):
    _fails(tmp_path, [tmp_path / "nope.yaml"], "file not found")


def test_bad_override(tmp_path):
    _fails(tmp_path, [_write(tmp_path, GOOD), "--set", "model.n_layers"], "expected section.key=value")
    _fails(tmp_path, [_write(tmp_path, GOOD), "--set", "model.n_heads=5"], "model.d_model")


@pytest.mark.parametrize("content, expected", [
    (None, "no such file or folder"),
    (b"   \n\n  ", "empty"),
    (b"short text", "shorter than one sequence"),
    (b"caf\xe9 latin-1 text " * 50, "not UTF-8"),
])
def test_bad_corpus_is_one_line_exit_2(tmp_path, content, expected):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    _fails(tmp_path, [_write(tmp_path, GOOD, corpus)], expected)


def test_out_dir_with_a_different_run_is_refused(tmp_path):
    out = tmp_path / "out"
    config = _write(tmp_path, GOOD)
    assert runner.invoke(app, ["train", str(config), "--out", str(out)]).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--set", "train.lr=0.01"])
    assert result.exit_code == 2 and "holds a different run" in result.output
    assert "train.lr" in result.output
    result = runner.invoke(app, ["train", str(config), "--out", str(out)])
    assert result.exit_code == 2 and "already holds a finished run" in result.output
    assert sorted(p.name for p in out.iterdir()) == before


def test_resume_without_a_run_is_refused(tmp_path):
    _fails(tmp_path, [_write(tmp_path, GOOD), "--resume"], "holds no run to resume")


def test_help_imports_no_jax():
    proc = subprocess.run([sys.executable, "-c",
                           "import sys; from laggrow.cli import app; from typer.testing import CliRunner;"
                           "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
                           "assert 'train' in r.output; assert 'jax' not in sys.modules, 'jax imported'"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_scientific_notation_is_a_number_in_yaml_and_overrides(tmp_path):
    from laggrow.config import load_run_config

    cfg = load_run_config(_write(tmp_path, GOOD.replace("steps: 2,", "steps: 2, lr: 3e-4,")),
                          ["model.ln_eps=1e-06"])
    assert cfg.train.lr == 3e-4 and cfg.model.ln_eps == 1e-6


def test_a_runs_config_json_is_a_valid_config(tmp_path):
    out = tmp_path / "out"
    config = _write(tmp_path, GOOD)
    assert runner.invoke(app, ["train", str(config), "--out", str(out), "--until", "1"]).exit_code == 0
    result = runner.invoke(app, ["train", str(out / "config.json"), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").is_file()
