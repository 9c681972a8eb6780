"""`laggrow stack` end to end on configs/stack-tiny.yaml: the whole comparison, its records and their
arithmetic (every method charged what the plan says, all at adaptive's FLOPs), the test set that no
choice reads, the final models as runs, a SIGKILLed and resumed run, old and bad input."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from conftest import CONFIGS, finish, invoke_ok, one_line_failure, snapshot, start_laggrow
from laggrow import formats, run_dir, store

TINY = CONFIGS / "stack-tiny.yaml"


@pytest.fixture(scope="module")
def stacked(tmp_path_factory) -> Path:
    """The tiny comparison, uninterrupted, run once for the module."""
    out = tmp_path_factory.mktemp("stack") / "tiny"
    invoke_ok("stack", TINY, "--out", out)
    return out


def _record(out: Path) -> dict:
    return json.loads((out / store.STACK_FILE).read_text())


def _curves(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / store.CURVES_FILE).read_text().splitlines()]


def _plan(record: dict):
    """The plan the record was run under (with the tokenizer's vocabulary, as run)."""
    from laggrow.stack.plan import plan_from_dict

    return plan_from_dict({**record["config"]["run"], "stack": record["config"]["stack"]})


def test_the_whole_comparison_runs_and_writes_its_records(stacked):
    record = _record(stacked)
    assert record[formats.KEY] == formats.FORMAT_VERSION and "format" not in record
    assert record["methods"] == ["adaptive", "top", "middle", "scratch"] and record["seeds"] == [0]
    assert [(s["depth"], s["start"], s["end"]) for s in record["stages"]] == [(1, 0, 10), (2, 10, 30), (3, 30, 60)]
    assert [(r["method"], r["seed"]) for r in record["runs"]] == [
        ("adaptive", 0), ("top", 0), ("middle", 0), ("scratch", 0)]
    for name in (store.REPORT_FILE, store.STACK_PNG, store.CURVES_FILE, store.STACK_CONFIG_FILE):
        assert (stacked / name).is_file(), name
    assert (stacked / store.STACK_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the held-out split, and which set does what
    evaluation = record["evaluation"]
    assert evaluation["selection_documents"] >= 1 and evaluation["test_documents"] >= 1
    assert evaluation["windows"] == 16 and "probe" in evaluation["selection"]
    assert "charged to none" in evaluation["test"]
    plan = _plan(record)
    assert record["budget"]["methods"]["adaptive"]["steps"] == 60
    for run in record["runs"]:
        assert np.isfinite(run["final_test_loss"]) and run["depth"] == 3 and run["final_test_loss_se"] > 0
        assert len(run["final_test_windows"]) == 16
        assert np.mean(run["final_test_windows"]) == pytest.approx(run["final_test_loss"], rel=1e-12)
        assert run["steps"] == record["budget"]["methods"][run["method"]]["steps"]
        assert [s["end"] - s["start"] for s in run["stages"]] == [s.steps for s in plan.stages_for(run["method"])]
    runs_ = {r["method"]: r for r in record["runs"]}
    assert [(s["depth"], s["start"]) for s in runs_["scratch"]["stages"]] == [(3, 0)]
    # top and middle: their own PROP-1 stages over a longer budget T'
    assert runs_["top"]["steps"] == runs_["middle"]["steps"] > 60
    assert [s["depth"] for s in runs_["top"]["stages"]] == [1, 2, 3]


def test_each_stage_has_the_depth_it_should_and_the_curves_are_ordered(stacked):
    rows = _curves(stacked)
    record = _record(stacked)
    for run in record["runs"]:
        method, steps_run = run["method"], run["steps"]
        mine = [r for r in rows if r["method"] == method]
        assert {(r["stage"], r["depth"]) for r in mine} == {(s["stage"], s["depth"]) for s in run["stages"]}
        assert [r["point"] for r in mine if r["point"] != "train"] == {
            "adaptive": ["init", "growth", "probe", "growth", "probe"], "scratch": ["init"]}.get(
            method, ["init", "growth", "growth"])
        steps, flops = [r["step"] for r in mine], [r["flops"] for r in mine]
        assert steps == sorted(steps) and flops == sorted(flops) and steps[-1] == steps_run
        # every evaluation of train.eval_every (10) and every stage's end is there, on the test set
        assert {r["step"] for r in mine if r["point"] == "train"} == (
            set(range(10, steps_run + 1, 10)) | {s["end"] for s in run["stages"]})
        assert all(r["test_loss"] > 0 and r["test_loss_se"] > 0 and "eval_loss" not in r for r in mine)
        assert mine[-1]["test_loss"] == pytest.approx(run["final_test_loss"], rel=1e-12)


def test_every_method_of_a_seed_starts_from_the_same_model_and_reads_the_same_batches(stacked):
    rows = _curves(stacked)

    def upto(method: str, stage: int) -> list[tuple]:
        return [(r["step"], r["point"], r["test_loss"], r["train_loss"]) for r in rows
                if r["method"] == method and r["stage"] <= stage]

    # top and middle both copy the one layer at the first growth: identical runs through stage 2,
    # bit for bit, which they are only if their init and their batches are the same
    assert upto("top", 2) == upto("middle", 2)
    assert upto("top", 3) != upto("middle", 3)  # then top copies layer 1, middle layer 0
    # adaptive trains over T, top over its longer T' (another schedule): they share the init
    assert upto("adaptive", 1)[0] == upto("top", 1)[0] and upto("adaptive", 1)[0][1] == "init"


def test_the_adaptive_choice_is_the_argmin_of_the_probe_losses(stacked):
    adaptive = _record(stacked)["runs"][0]
    assert [c["stage"] for c in adaptive["choices"]] == [2, 3]
    for choice in adaptive["choices"]:
        losses = {c["name"]: c["selection_probe_loss"] for c in choice["candidates"]}
        assert choice["chosen"] == min(losses, key=losses.get)
        assert choice["predictor"] == "loss" and choice["probed"]
        # the tied: the others within 2 paired window SEs (or float rounding); the choice never among them
        assert choice["chosen"] not in choice["tied"] and set(choice["tied"]) <= set(losses)
        assert all(c["selection_probe_loss_se"] > 0 for c in choice["candidates"])
    # the candidates are every block of the model before the growth, then the identity block on top
    assert [[c["name"] for c in ch["candidates"]] for ch in adaptive["choices"]] == [
        ["block0", "zero"], ["block0", "block1", "zero"]]
    assert [c["layers"] for c in adaptive["choices"][1]["candidates"]] == [[0, 0, 1], [0, 1, 1], [0, 1, None]]
    # the curve's growth and probe rows are the winner's, measured on the test set, not the selection
    # losses the choice read
    rows = [r for r in _curves(stacked) if r["method"] == "adaptive" and r["point"] in ("growth", "probe")]
    for growth, probe, choice in zip(rows[::2], rows[1::2], adaptive["choices"], strict=True):
        chosen = next(c for c in choice["candidates"] if c["name"] == choice["chosen"])
        assert (growth["step"], probe["step"]) == (choice["step"], choice["step"] + 4)
        assert growth["test_loss"] != chosen["selection_loss_at_growth"]
        assert probe["test_loss"] != chosen["selection_probe_loss"]


def test_top_and_middle_copy_the_blocks_their_methods_name(stacked):
    runs_ = {r["method"]: r for r in _record(stacked)["runs"]}
    assert [c["chosen"] for c in runs_["top"]["choices"]] == ["block0", "block1"]  # the top layer of 1, of 2
    assert [c["chosen"] for c in runs_["middle"]["choices"]] == ["block0", "block0"]  # ceil(n/2)-th, from 1
    assert runs_["scratch"]["choices"] == []


def test_every_method_is_charged_its_plan_and_all_are_at_adaptives_flops(stacked):
    record = _record(stacked)
    plan = _plan(record)
    by = {r["method"]: r["compute"] for r in record["runs"]}
    for method, c in by.items():
        assert c == plan.compute(method)  # what the run charged as it went is the arithmetic's
        assert c["train_flops"] + c["probe_flops"] + c["eval_flops"] == c["total_flops"]
        assert c["train_tokens"] + c["probe_tokens"] == c["total_tokens"]
        assert record["budget"]["methods"][method]["flops"] == c["total_flops"]
    assert by["top"] == by["middle"] and by["top"]["probe_flops"] == by["top"]["eval_flops"] == 0
    # adaptive is charged the other candidates' 4 probe steps and every candidate's two selection
    # evaluations (right after the growth, and at K) at both growths: 2 candidates at depth 2, 3 at depth 3
    assert by["adaptive"]["probe_flops"] == 1 * 4 * plan.step_flops(2) + 2 * 4 * plan.step_flops(3)
    assert by["adaptive"]["eval_flops"] == 2 * 2 * plan.eval_flops(2) + 3 * 2 * plan.eval_flops(3)
    # every other method: trained to adaptive's total, less than one 3-layer step short of it
    budget, step = by["adaptive"]["total_flops"], plan.step_flops(3)
    assert record["budget"]["flops"] == budget and record["budget"]["target_step_flops"] == step
    for method in ("top", "middle", "scratch"):
        assert by[method]["total_flops"] <= budget < by[method]["total_flops"] + step
    # the curves' last FLOPs are the totals
    rows = _curves(stacked)
    for method, c in by.items():
        assert [r for r in rows if r["method"] == method][-1]["flops"] == c["total_flops"]


def test_every_final_model_is_a_run_that_grow_and_pools_can_start_from(stacked, tmp_path):
    from laggrow import train
    from laggrow.jobs.growing import grow_run

    test = None
    for run in _record(stacked)["runs"]:
        loaded = run_dir.load_run(stacked / run["model_dir"], what="stacked model")
        assert loaded.config.model.n_layers == 3 and int(loaded.state["step"]) == run["steps"]
        assert loaded.config.train.steps == run["steps"]  # its own budget, one schedule over it
        assert loaded.data_position == run["steps"]  # a grown run continues the stream from here
        # the summary's final_eval_loss is the test set's: the saved model's loss on the test windows
        summary = json.loads((stacked / run["model_dir"] / store.SUMMARY_FILE).read_text())
        assert summary["final_eval_loss"] == run["final_test_loss"]
        if test is None:
            d = loaded.config.data
            test = run_dir.load_source_dataset(loaded).test_batches(d.eval_batches, d.eval_batch_size)
        windows = train.evaluate_windows(loaded.params, loaded.config.model, test)
        np.testing.assert_allclose(windows, run["final_test_windows"], rtol=1e-5)
    record = grow_run(stacked / "models" / "adaptive-seed0", "stack_top", tmp_path / "grown", ["model.n_layers=4"])
    assert np.isfinite(record["eval_loss_before"])


def test_a_second_run_on_a_finished_directory_redoes_nothing(stacked):
    before = snapshot(stacked)
    invoke_ok("stack", TINY, "--out", stacked)
    changed = _changed(before, snapshot(stacked))
    assert changed == [], changed


def _changed(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """The paths whose bytes differ between two `snapshot`s (or that only one has)."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def test_a_directory_written_before_format_version_is_continued_and_reported(stacked, tmp_path):
    """stack-config.json and stack.json as laggrow stack wrote them before format_version (their own
    `format: 2`, today's shape): a rerun redoes nothing and writes both with format_version; report
    renders them."""
    import shutil

    old = tmp_path / "before-format-version"
    shutil.copytree(stacked, old)
    for name in (store.STACK_CONFIG_FILE, store.STACK_FILE):
        record = json.loads((old / name).read_text())
        del record[formats.KEY]
        (old / name).write_text(json.dumps({**record, "format": 2}))
    invoke_ok("report", old)
    before = snapshot(old)
    invoke_ok("stack", TINY, "--out", old)
    after = snapshot(old)
    changed = _changed(before, after)
    assert changed == [store.STACK_CONFIG_FILE, store.STACK_FILE], changed
    for name in changed:
        assert json.loads(after[name]) == json.loads((stacked / name).read_text()), name


def _without_seconds(record: dict) -> dict:
    for run in record["runs"]:
        run.pop("seconds")
    return record


def test_a_killed_stacking_run_resumes_from_its_last_stage_and_ends_with_the_same_records(stacked, tmp_path):
    out = tmp_path / "killed"
    # SIGKILL right after adaptive's second stage is checkpointed (its first save at step 30)
    proc = start_laggrow("stack", TINY, "--out", out, fault="saved:30=SIGKILL")
    stderr = finish(proc)
    assert proc.returncode == -signal.SIGKILL, stderr
    manifest = out / store.STAGES_DIR / "adaptive-seed0" / store.CHECKPOINT_DIR / "30" / store.CHECKPOINT_MANIFEST
    assert manifest.is_file()
    assert not (out / store.STACK_FILE).is_file()
    # the stage checkpoint holds the 2-layer model and its AdamW state of the same shapes
    from laggrow.checkpoint import Checkpointer
    from laggrow.stack.method import abstract_state
    from laggrow.stack.plan import load_stack_plan

    plan = load_stack_plan(TINY)
    with Checkpointer(manifest.parent.parent.parent, read_only=True) as ckpt:
        state, position = ckpt.restore(abstract_state(plan, plan.run.train, 2), step=30)
    assert position == 30 and state["params"]["blocks"]["attn"]["w_qkv"].shape[0] == 2
    adam = [s for s in jax.tree.leaves(state["opt_state"], is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)][0]
    assert jax.tree.map(np.shape, adam.mu) == jax.tree.map(np.shape, state["params"])
    assert jax.tree.map(np.shape, adam.nu) == jax.tree.map(np.shape, state["params"])
    result = invoke_ok("stack", TINY, "--out", out)
    assert "resumed after stage 2" in result.output
    assert _without_seconds(_record(out)) == _without_seconds(_record(stacked))
    assert _curves(out) == _curves(stacked)


def test_adaptive_chooses_on_the_selection_set_whatever_the_test_set_holds(stacked, tmp_path):
    """The same adaptive run with other test windows: every choice, with every selection loss and
    score, is the same; only what is measured on the test set differs."""
    from laggrow.stack.driver import prepare_stack
    from laggrow.stack.method import MethodRun

    prepared = prepare_stack(TINY, tmp_path / "other-test")
    d = prepared.plan.run.data
    assert np.array_equal(prepared.eval_sets["selection"],
                          prepared.dataset.selection_batches(d.eval_batches, d.eval_batch_size))
    assert np.array_equal(prepared.eval_sets["test"], prepared.dataset.test_batches(d.eval_batches, d.eval_batch_size))
    other = {"selection": prepared.eval_sets["selection"],
             "test": (prepared.eval_sets["test"] + 1) % prepared.plan.run.model.vocab_size}
    store.ensure_dir(prepared.out, "--out")
    result = MethodRun(prepared.plan, "adaptive", 0, prepared.dataset, prepared.out, other).execute()
    adaptive = _record(stacked)["runs"][0]
    assert result["choices"] == adaptive["choices"]
    assert result["compute"] == adaptive["compute"]
    assert result["final_test_loss"] != adaptive["final_test_loss"]


def test_an_old_stacking_directory_is_one_line_when_resumed_or_reported(stacked, tmp_path):
    """A directory written before the test set and equal budgets (before format_version, record
    format 1: its config file without a format, stack.json of format 1) is refused, not continued
    or rendered."""
    import shutil

    from typer.testing import CliRunner

    from laggrow.cli import app

    old = tmp_path / "old"
    shutil.copytree(stacked, old)
    config = json.loads((old / store.STACK_CONFIG_FILE).read_text())
    del config[formats.KEY]
    (old / store.STACK_CONFIG_FILE).write_text(json.dumps(config))
    record = _record(old)
    del record[formats.KEY]
    record["format"] = 1
    (old / store.STACK_FILE).write_text(json.dumps(record))
    before = snapshot(old)
    one_line_failure(CliRunner().invoke(app, ["stack", str(TINY), "--out", str(old)]),
                     "written by another version of laggrow stack (record format 1, expected 2")
    one_line_failure(CliRunner().invoke(app, ["report", str(old)]),
                     "written by another version of laggrow stack (record format 1, expected 2")
    assert snapshot(old) == before


def test_ctrl_c_stops_after_a_step_and_says_how_to_continue(tmp_path):
    out = tmp_path / "interrupted"
    sets = ["stack.methods=[top]"]
    # Ctrl-C right after top's first stage (steps 0-10 of stages of 10, 20, 30) is checkpointed
    proc = start_laggrow("stack", TINY, "--out", out, *[a for s in sets for a in ("--set", s)],
                         fault="saved:10=SIGINT")
    stderr = finish(proc)
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: top-seed0 stopped in stage") and "Traceback" not in stderr
    assert f"continue with: laggrow stack {TINY} --out {out} --set 'stack.methods=[top]'" in last
    assert not (out / store.STACK_FILE).is_file()
    # what it kept: the first stage, from which the same command goes on
    assert [json.loads(line)["stage"] for line in (out / store.STAGES_DIR / "top-seed0" / store.CHOICES_FILE)
            .read_text().splitlines()] in ([], [2])


@pytest.mark.parametrize(("sets", "expected"), [
    (["model.n_layers=1"], "model.n_layers: expected stack.start_layers (1) plus a positive multiple"),
    (["stack.block=2"], "stack.start_layers: expected a positive multiple of stack.block (2)"),
    (["stack.alpha=0"], "stack.alpha: expected a number > 0"),
    (["stack.probe_steps=25"], "stack.probe_steps: expected at most the shortest stage that starts with a probe"),
    (["stack.candidates=[blocks, bottom]"], "stack.candidates: expected names from blocks, top, zero, random"),
    (["stack.methods=[adaptive, lag]"], "stack.methods: expected names from adaptive, top, middle, scratch"),
    (["train.steps=2", "train.warmup_steps=0", "stack.probe_steps=1"],
     "train.steps: expected a budget that gives each of the 3 stages at least one step"),
    (["stack.seeds=-1"], "stack.seeds: expected a list"),
    # i ** alpha beyond the largest float (54 lines of OverflowError before)
    (["stack.alpha=700"], "stack.alpha: expected a number > 0 whose stage weights i ** alpha (i = 1..3"),
    # stack runs on one device: a layout would be ignored, as train refuses one it cannot use
    (["mesh.data=2"], "mesh: laggrow stack runs on one device"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, sets, expected):
    from typer.testing import CliRunner

    from laggrow.cli import app

    out = tmp_path / "never"
    args = ["stack", str(TINY), "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    one_line_failure(CliRunner().invoke(app, args), expected)
    assert not out.exists()


def test_an_out_that_holds_something_else_or_another_stacking_run_is_refused(stacked, tmp_path):
    from typer.testing import CliRunner

    from laggrow.cli import app

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_failure(CliRunner().invoke(app, ["stack", str(TINY), "--out", str(other)]),
                     "not empty and not a stacking directory")
    before = snapshot(stacked)
    one_line_failure(CliRunner().invoke(app, ["stack", str(TINY), "--out", str(stacked), "--set", "stack.alpha=2"]),
                     "holds a different stacking run (stack.alpha: 1.0 there, 2.0 here)")
    assert snapshot(stacked) == before


def test_a_damaged_record_read_back_is_one_line(stacked, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from laggrow.cli import app

    copy = tmp_path / "copy"
    shutil.copytree(stacked, copy)
    (copy / store.STACK_CONFIG_FILE).write_text("{not json")
    one_line_failure(CliRunner().invoke(app, ["stack", str(TINY), "--out", str(copy)]),
                     str(copy / store.STACK_CONFIG_FILE))
    shutil.rmtree(copy)
    shutil.copytree(stacked, copy)
    shutil.rmtree(copy / store.MODELS_DIR / "top-seed0")
    lines = (copy / store.CURVES_FILE).read_text().splitlines()
    (copy / store.CURVES_FILE).write_text("\n".join([lines[0], "{broken", *lines[1:]]) + "\n")
    # found once the run has started (after its header line): one error line, no traceback
    result = CliRunner().invoke(app, ["stack", str(TINY), "--out", str(copy)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"{copy / store.CURVES_FILE} line 2: malformed" in errors[0]


def _drop_choices(copy: Path) -> str:
    (copy / store.STAGES_DIR / "adaptive-seed0" / store.CHOICES_FILE).unlink()
    return f"{store.STAGES_DIR}/adaptive-seed0/{store.CHOICES_FILE}: missing, though adaptive-seed0 has finished"


def _drop_rows(copy: Path) -> str:
    rows = [r for r in _curves(copy) if r["method"] != "middle"]
    (copy / store.CURVES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"{store.CURVES_FILE}: no rows of the finished middle-seed0 (init at step 0"


@pytest.mark.parametrize("damage", [_drop_choices, _drop_rows])
def test_a_rerun_checks_the_records_of_finished_methods(stacked, tmp_path, damage):
    """A finished method is read back, not run again: with its records gone, stack.json would have
    been written without them (adaptive's `choices: []`, rows missing) and the command exit 0."""
    import shutil

    from typer.testing import CliRunner

    from laggrow.cli import app

    copy = tmp_path / "copy"
    shutil.copytree(stacked, copy, ignore=shutil.ignore_patterns("checkpoints"))
    expected = damage(copy)
    before = snapshot(copy)
    result = CliRunner().invoke(app, ["stack", str(TINY), "--out", str(copy)])
    # found once the run has started (after its header line): one error line, no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert expected in errors[0] and f"remove {copy / store.MODELS_DIR}" in errors[0], errors[0]
    assert snapshot(copy) == before
