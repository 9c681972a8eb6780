"""`laggrow grow` and `laggrow strategies` from the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import invoke_ok
from laggrow import run_dir
from laggrow.cli import app
from laggrow.growth import STRATEGIES

runner = CliRunner()
WIDE_DEEP = ["--set", "model.n_layers=3", "--set", "model.d_model=64", "--set", "model.n_heads=8"]


@pytest.fixture(scope="module")
def base_run(tiny_base_run):
    return tiny_base_run


@pytest.fixture(scope="module")
def grown_run(base_run):
    out = base_run.parent / "grown"
    result = invoke_ok("grow", "--from", base_run, "--strategy", "hypercloning+copy_zero", *WIDE_DEEP,
                 "--out", out, "--optimizer-state", "carry", "--seed", 3)
    return out, result.output


def test_grow_writes_a_loadable_run_and_growth_json(base_run, grown_run):
    out, output = grown_run
    record = json.loads((out / "growth.json").read_text())
    assert record["strategy"] == "hypercloning+copy_zero" and record["function_preserving"] is True
    assert record["source"] == str(base_run.absolute()) and record["optimizer_state"] == "carry"
    assert record["eval_loss_after"] == pytest.approx(record["eval_loss_before"], abs=1e-5)
    for name in ("function_preserving", "eval_loss_before", "eval_loss_after"):
        assert name in output
    loaded = run_dir.load_run(out)
    assert (loaded.config.model.n_layers, loaded.config.model.d_model) == (3, 64)
    assert int(loaded.state["step"]) == 0
    mu = loaded.state["opt_state"][1][0].mu  # carried: the source's moments, tiled
    source_mu = run_dir.load_run(base_run).state["opt_state"][1][0].mu
    assert mu["blocks"]["mlp"]["w_in"].shape == (3, 64, 128)
    assert float(abs(mu["blocks"]["mlp"]["w_in"][0, :32, :128] - source_mu["blocks"]["mlp"]["w_in"][0]).max()) == 0


def test_training_a_grown_run_continues_the_source_batch_stream(base_run, tmp_path):
    """A grown run's batch i is batch source_steps + i of the stream: it does not re-read the
    batches its source trained on first, and a resumed run keeps the same offset."""
    import shutil

    from laggrow.checkpoint import Checkpointer
    from laggrow.jobs.training import execute_run, prepare_run

    out = tmp_path / "grown"
    invoke_ok("grow", "--from", base_run, "--strategy", "stack", "--set", "model.n_layers=3", "--out", out)
    source_steps = json.loads((base_run / "summary.json").read_text())["steps"]
    assert json.loads((out / "growth.json").read_text())["data_position"] == source_steps
    cfg = run_dir.read_run_config(out)
    execute_run(prepare_run(cfg, out, resume=True), until=2)
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    execute_run(prepare_run(cfg, resumed, resume=True), until=3)
    for directory, step in ((out, 2), (resumed, 3)):
        with Checkpointer(directory) as ckpt:
            assert ckpt.latest_step() == step
        assert run_dir.load_run(directory, require_finished=False).data_position == source_steps + step


def test_grow_non_preserving_changes_the_loss(base_run):
    out = base_run.parent / "stacked"
    invoke_ok("grow", "--from", base_run, "--strategy", "hypercloning+stack", *WIDE_DEEP, "--out", out)
    record = json.loads((out / "growth.json").read_text())
    assert record["function_preserving"] is False and record["optimizer_state"] == "reset"
    assert abs(record["eval_loss_after"] - record["eval_loss_before"]) > 1e-4


@pytest.mark.parametrize("args,layers,flagged,exact", [
    # the whole source, then its top layer again, zeroed: exact, though slices is flagged "no"
    (["--strategy", "slices", "--ranges", "[[0, 2], [1, 2, zero]]", "--set", "model.n_layers=3"], [0, 1, 1],
     False, True),
    (["--strategy", "dus", "--set", "model.n_layers=4"], [0, 1, 0, 1], False, False),  # drop 0, from the target
    (["--strategy", "block_expansion", "--every", "2", "--set", "model.n_layers=3"], [0, 1, 1], True, True),
], ids=["slices", "dus", "block_expansion"])
def test_grow_with_a_recipe(base_run, tmp_path, args, layers, flagged, exact):
    """Each recipe end to end from its command-line options: the layers are the source's (by
    value), the loss is kept exactly when the growth is exact, the moments are carried (zero in
    a zeroed output projection)."""
    out = tmp_path / "grown"
    invoke_ok("grow", "--from", base_run, *args, "--out", out, "--optimizer-state", "carry")
    record = json.loads((out / "growth.json").read_text())
    assert record["function_preserving"] is flagged
    if exact:
        assert record["eval_loss_after"] == pytest.approx(record["eval_loss_before"], abs=1e-5)
    else:
        assert abs(record["eval_loss_after"] - record["eval_loss_before"]) > 1e-4
    grown, source = run_dir.load_run(out), run_dir.load_run(base_run)
    w_in, src_w_in = grown.params["blocks"]["mlp"]["w_in"], source.params["blocks"]["mlp"]["w_in"]
    assert w_in.shape[0] == len(layers)
    for j, i in enumerate(layers):
        assert float(abs(w_in[j] - src_w_in[i]).max()) == 0, j
    mu = grown.state["opt_state"][1][0].mu["blocks"]["mlp"]["w_out"]
    src_mu = source.state["opt_state"][1][0].mu["blocks"]["mlp"]["w_out"]
    zeroed = [j for j in range(len(layers)) if not grown.params["blocks"]["mlp"]["w_out"][j].any()]
    assert zeroed == ([2] if exact else [])  # the one identity layer, on top
    for j, i in enumerate(layers):
        assert float(abs(mu[j] - (0 if j in zeroed else src_mu[i])).max()) == 0, j


def test_strategies_table_and_json():
    table = invoke_ok("strategies").output
    assert all(name in table for name in STRATEGIES)
    rows = json.loads(invoke_ok("strategies", "--json").output)
    assert [r["name"] for r in rows] == list(STRATEGIES)
    assert {"name", "kind", "function_preserving", "definition", "reference"} <= set(rows[0])


def _fails(base_run, args, expected):
    out = base_run.parent / "refused"
    before = sorted(p.name for p in base_run.parent.iterdir())
    result = runner.invoke(app, ["grow", *map(str, args), "--out", str(out)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0], lines[0]
    assert sorted(p.name for p in base_run.parent.iterdir()) == before, "nothing written"


@pytest.mark.parametrize("args,expected", [
    (["--strategy", "stack_midle", "--set", "model.n_layers=3"], "did you mean 'stack_middle'"),
    (["--strategy", "stack", "--set", "model.n_layers=1"], "smaller than the source"),
    (["--strategy", "hypercloning", "--set", "model.d_model=48", "--set", "model.n_heads=6"],
     "possible d_model: 32 (unchanged), 64, 96, 128"),
    (["--strategy", "fusion", "--set", "model.d_model=96", "--set", "model.n_heads=12"], "possible d_model: 64"),
    (["--strategy", "stack", "--set", "model.n_layers=3", "--block", "2"], "option block: not used"),
    (["--strategy", "stack", "--set", "model.n_layers=3", "--optimizer-state", "keep"], "--optimizer-state"),
    (["--strategy", "stack", "--set", "model.n_layer=3"], "model.n_layer: unknown key"),
    (["--strategy", "stack", "--set", "model.n_layers=3", "--ranges", "[[0, 2]]"], "option ranges: not used"),
    (["--strategy", "slices", "--set", "model.n_layers=3", "--ranges", "[[0, 2], [1, 2"],
     "--ranges '[[0, 2], [1, 2': expected a list of [start, stop] or [start, stop, zero]"),
    (["--strategy", "slices", "--set", "model.n_layers=3", "--ranges", "[[0, 2], [1, 2, z]]"],
     "option ranges: entry 1 is [1, 2, 'z']"),
    (["--strategy", "slices", "--set", "model.n_layers=4", "--ranges", "[[0, 2], [1, 2]]"],
     "the ranges hold 3 layers, but the target's n_layers is 4"),
    (["--strategy", "dus", "--set", "model.n_layers=3"], "strategy dus: makes 2L - 2*drop layers"),
    (["--strategy", "block_expansion", "--set", "model.n_layers=4", "--every", "2"],
     "option every: 2 gives 2 + 2/2 = 3 layers"),
])
def test_bad_requests_are_one_line_and_write_nothing(base_run, args, expected):
    _fails(base_run, ["--from", base_run, *args], expected)


def test_bad_sources_and_partners(base_run, grown_run, tmp_path):
    layers = ["--strategy", "stack", "--set", "model.n_layers=3"]
    _fails(base_run, ["--from", base_run.parent / "nope", *layers], "does not exist")
    (tmp_path / "empty").mkdir()
    _fails(base_run, ["--from", tmp_path / "empty", *layers], "not a laggrow run")
    wide = ["--strategy", "fusion", "--set", "model.d_model=64", "--set", "model.n_heads=8",
            "--set", "model.d_ff=256"]
    _fails(base_run, ["--from", base_run, *wide, "--partner", grown_run[0]], "fusion partner")
    _fails(base_run, ["--from", base_run, *wide, "--partner", tmp_path / "empty"], "--partner")


def test_existing_out_is_refused(base_run, grown_run):
    result = runner.invoke(app, ["grow", "--from", str(base_run), "--strategy", "stack", "--set",
                                 "model.n_layers=3", "--out", str(grown_run[0])])
    assert result.exit_code == 2 and "already exists" in result.output
    assert (grown_run[0] / "growth.json").is_file()
