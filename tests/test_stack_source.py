"""`laggrow stack` from a source (`stack.source`): a tiny laggrow-trained run and an imported tiny
Hugging Face llama. The stage schedule starts at the source's depth, the first growth at step 0 from
the source's parameters (checked against the source evaluated and grown here, apart from the stack's
code), every method at adaptive's FLOPs with the source's training charged to none, stack.json's
record of the source, a rerun that redoes nothing and refuses a changed source, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from conftest import CONFIGS, invoke_ok, one_line_failure, snapshot
from laggrow import run_dir, store, train
from laggrow.config import ModelConfig

HF_LLAMA = Path(__file__).resolve().parent / "fixtures" / "hf" / "llama" / "model"
WINDOWS = {"eval_batches": 2, "eval_batch_size": 8}  # as configs/tiny.yaml's, so the source's windows are ours


def _write_config(path: Path, source: Path, corpus: str = "kjv", **stack) -> Path:
    """A stacking config of 20 steps from `source` to one layer more (3), in blocks of one."""
    raw = {"model": {"n_layers": 3},
           "data": {"corpus": corpus, "seq_len": 32, **WINDOWS},
           "train": {"steps": 20, "batch_size": 8, "lr": 0.003, "warmup_steps": 5, "eval_every": 10,
                     "log_every": 10},
           "stack": {"source": str(source), "block": 1, "probe_steps": 4, "candidates": ["blocks", "zero"],
                     "seeds": [0], **stack}}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def from_run(tmp_path_factory, tiny_base_run) -> dict[str, Path]:
    """A stack (every method) from a link to the shared 10-step tiny run: the link lets a test swap
    the source behind the same path."""
    root = tmp_path_factory.mktemp("stack-source")
    link = root / "source"
    link.symlink_to(tiny_base_run, target_is_directory=True)
    config = _write_config(root / "stack.yaml", link)
    out = root / "out"
    invoke_ok("stack", config, "--out", out)
    return {"root": root, "link": link, "config": config, "out": out, "source": tiny_base_run}


def _record(out: Path) -> dict:
    return json.loads((out / store.STACK_FILE).read_text())


def _curves(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / store.CURVES_FILE).read_text().splitlines()]


def _loss(params: dict, cfg: ModelConfig, windows: np.ndarray) -> float:
    return float(np.mean(train.evaluate_windows(params, cfg, windows)))


def test_the_stages_start_at_the_sources_depth_and_the_first_growth_at_step_0(from_run):
    record = _record(from_run["out"])
    assert [(s["stage"], s["depth"], s["start"], s["end"]) for s in record["stages"]] == [(1, 2, 0, 0), (2, 3, 0, 20)]
    assert record["config"]["stack"]["start_layers"] == 2
    runs_ = {r["method"]: r for r in record["runs"]}
    assert [s["depth"] for s in runs_["top"]["stages"]] == [2, 3] and runs_["top"]["stages"][0]["steps"] == 0
    assert [(s["depth"], s["start"]) for s in runs_["scratch"]["stages"]] == [(3, 0)]
    rows = _curves(from_run["out"])
    for method in ("adaptive", "top", "middle"):
        mine = [(r["stage"], r["depth"], r["step"], r["point"]) for r in rows if r["method"] == method]
        assert mine[:2] == [(1, 2, 0, "init"), (2, 3, 0, "growth")]
    assert [r["depth"] for r in rows if r["method"] == "scratch"][0] == 3


def test_the_first_models_are_the_source_and_the_source_grown(from_run):
    """The init row is the source's own loss; top's and middle's growth rows are the source grown by
    the registered stack_top / stack_middle; adaptive's zero candidate keeps the source's selection
    loss, and adaptive's growth row is the loss of the candidate it chose."""
    from laggrow import growth

    source = run_dir.load_run(from_run["source"])
    data = run_dir.load_source_dataset(source)
    test, selection = data.test_batches(2, 8), data.selection_batches(2, 8)
    src_cfg = source.config.model
    dst_cfg = ModelConfig(**{**src_cfg.to_dict(), "n_layers": 3})
    source_loss = _loss(source.params, src_cfg, test)
    rows = _curves(from_run["out"])
    first = {(r["method"], r["point"]): r["test_loss"] for r in rows if r["step"] == 0}
    for method in ("adaptive", "top", "middle"):
        assert first[method, "init"] == pytest.approx(source_loss, rel=1e-6)
    assert abs(first["scratch", "init"] - source_loss) > 0.1  # a random model, not the source
    grown = {}
    for method, strategy in (("top", "stack_top"), ("middle", "stack_middle")):
        params = growth.grow(source.params, src_cfg, dst_cfg, strategy, jax.random.key(0))
        grown[method] = _loss(params, dst_cfg, test)
        assert first[method, "growth"] == pytest.approx(grown[method], rel=1e-6)
    assert grown["top"] != pytest.approx(source_loss, rel=1e-4)  # a copy is not function-preserving here
    choice = _record(from_run["out"])["runs"][0]["choices"][0]
    at_growth = {c["name"]: c["selection_loss_at_growth"] for c in choice["candidates"]}
    assert at_growth["zero"] == pytest.approx(_loss(source.params, src_cfg, selection), rel=1e-6)
    expected = {"block1": grown["top"], "block0": grown["middle"], "zero": source_loss}[choice["chosen"]]
    assert first["adaptive", "growth"] == pytest.approx(expected, rel=1e-6)


def test_every_method_is_at_adaptives_flops_and_the_source_is_charged_to_none(from_run):
    record = _record(from_run["out"])
    cfg = ModelConfig(**{**record["config"]["run"]["model"]})
    per_token = cfg.train_flops_per_token(32)
    step, evaluation = per_token * 8 * 32, per_token // 3 * 2 * 8 * 32
    # adaptive: its 20 steps at depth 3, the two other candidates' 4 probe steps, and 3 candidates
    # evaluated on the selection set at probe steps 0 and 4; nothing for the source's 10 steps
    budget = 20 * step + 2 * 4 * step + 3 * 2 * evaluation
    assert record["budget"]["flops"] == budget
    for run in record["runs"]:
        assert budget - step < run["compute"]["total_flops"] <= budget, run["method"]
        assert run["compute"]["total_flops"] == record["budget"]["methods"][run["method"]]["flops"]
    assert all(r["flops"] == 0 and r["tokens"] == 0 for r in _curves(from_run["out"]) if r["step"] == 0)


def test_stack_json_and_the_report_record_the_source(from_run):
    source = _record(from_run["out"])["source"]
    assert source["config_path"] == str(from_run["link"]) and source["origin"] == "train"
    assert source["n_layers"] == 2 and source["checkpoint_step"] == 10 and len(source["fingerprint"]) == 64
    assert source["optimizer_moments"] is True and source["optimizer_state"]["carried"] is True
    assert "charged to no method" in source["compute"]
    report = (from_run["out"] / store.REPORT_FILE).read_text()
    assert "| source |" in report and "the source, not trained here" in report
    # the final models continue the stream where the source stopped (its position 10)
    adaptive = run_dir.load_run(from_run["out"] / "models" / "adaptive-seed0")
    assert adaptive.data_position == 10 + 20 and adaptive.config.model.n_layers == 3


def test_a_rerun_redoes_nothing_and_a_changed_source_is_refused(from_run, tiny_config_path):
    from typer.testing import CliRunner

    from laggrow.cli import app

    out, link = from_run["out"], from_run["link"]
    before = snapshot(out)
    invoke_ok("stack", from_run["config"], "--out", out)
    assert snapshot(out) == before
    other = from_run["root"] / "other"
    invoke_ok("train", tiny_config_path, "--out", other, "--set", "train.steps=2", "--set", "train.seed=1",
              "--set", "train.eval_every=2", "--set", "train.warmup_steps=1")
    link.unlink()
    link.symlink_to(other, target_is_directory=True)
    try:
        one_line_failure(CliRunner().invoke(app, ["stack", str(from_run["config"]), "--out", str(out)]),
                         f"stack.source {link}: changed since the stacking run in {out} started")
        assert snapshot(out) == before
    finally:
        link.unlink()
        link.symlink_to(from_run["source"], target_is_directory=True)


def test_a_stack_from_an_imported_llama(tmp_path):
    """Through the CLI: import the tiny llama fixture, stack it to 3 layers on its own tokenizer."""
    from laggrow.data import DataConfig, load_documents

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(load_documents(DataConfig(corpus="kjv"))[:60]), encoding="utf-8")
    imported = tmp_path / "imported"
    invoke_ok("import", HF_LLAMA, "--out", imported, "--set", f"data.corpus={corpus}", "--set", "data.seq_len=32",
              "--set", "data.eval_batches=2", "--set", "data.eval_batch_size=8")
    config = _write_config(tmp_path / "stack.yaml", imported, corpus=str(corpus), methods=["adaptive"])
    out = tmp_path / "out"
    invoke_ok("stack", config, "--out", out)
    record = _record(out)
    source = record["source"]
    assert source["origin"] == "import" and source["model_type"] == "llama" and source["weights"]
    assert source["optimizer_moments"] is False and source["optimizer_state"]["carried"] is False
    assert "fresh" in source["optimizer_state"]["what"]
    model_cfg = record["config"]["run"]["model"]
    assert (model_cfg["arch"], model_cfg["n_kv_heads"], model_cfg["vocab_size"], model_cfg["n_layers"]) == (
        "llama", 2, 320, 3)  # the import's model (its padded vocabulary kept), one layer deeper
    assert record["config"]["run"]["data"]["tokenizer"] == "hf"
    run = run_dir.load_run(imported)
    test = run_dir.load_source_dataset(run).test_batches(2, 8)
    init = next(r for r in _curves(out) if (r["method"], r["point"]) == ("adaptive", "init"))
    assert init["test_loss"] == pytest.approx(_loss(run.params, run.config.model, test), rel=1e-6)
    assert [r["method"] for r in record["runs"]] == ["adaptive"]
    assert record["runs"][0]["compute"]["total_flops"] == record["budget"]["flops"]
    model_dir = out / "models" / "adaptive-seed0"
    assert (model_dir / store.TOKENIZER_CONFIG_FILE).is_file()
    assert run_dir.load_tokenizer(model_dir).encode("In the beginning").tolist() == \
        run_dir.load_tokenizer(imported).encode("In the beginning").tolist()


@pytest.mark.parametrize(("sets", "expected"), [
    (["stack.source={missing}"], "stack.source {missing}: does not exist"),
    (["stack.source={empty}"], "stack.source {empty}: not a laggrow run"),
    (["model.d_model=64"], "model.d_model: expected the source's 32"),
    (["model.arch=llama", "model.pos_emb=rope"], "model.pos_emb: expected the source's 'learned'"),
    (["data.tokenizer=bpe"], "data.tokenizer: expected the source's 'byte'"),
    (["stack.block=3", "model.n_layers=5"], "its 2 layers are not a multiple of stack.block (3"),
    (["model.n_layers=2"], "model.n_layers: expected the source's depth, 2 layers, plus a positive multiple"),
    (["stack.start_layers=1"], "stack.start_layers: expected the source's depth 2 or no start_layers"),
])
def test_bad_input_with_a_source_is_one_line_exit_2_and_nothing_written(tmp_path, tiny_base_run, sets, expected):
    from typer.testing import CliRunner

    from laggrow.cli import app

    names = {"missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    names["empty"].mkdir()
    config = _write_config(tmp_path / "stack.yaml", tiny_base_run)
    out = tmp_path / "never"
    args = ["stack", str(config), "--out", str(out)] + [a for s in sets for a in ("--set", s.format(**names))]
    one_line_failure(CliRunner().invoke(app, args), expected.format(**names))
    assert not out.exists()


def test_the_schedule_from_a_source_splits_t_over_the_growths_alone():
    from laggrow.stack.plan import stages_over

    stages = stages_over(60, 2, 4, 1, 1.0, from_source=True)
    assert [(s.stage, s.depth, s.start, s.end) for s in stages] == [(1, 2, 0, 0), (2, 3, 0, 20), (3, 4, 20, 60)]
    # without a source the first stage trains from scratch and takes its PROP-1 share
    assert [s.steps for s in stages_over(60, 2, 4, 1, 1.0)] == [10, 20, 30]


def test_the_stack_demo_configs_are_unchanged_by_the_source_key():
    from laggrow.stack.plan import load_stack_plan

    plan = load_stack_plan(CONFIGS / "stack-tiny.yaml")
    assert plan.stack.source is None and not plan.from_source and plan.stages[0].steps == 10
