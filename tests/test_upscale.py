"""configs/upscale.yaml: both pools checked as `laggrow run` checks them before training anything,
and its 1.5x pool end to end at a tiny size: the base (an 8-layer Llama-family model with a BPE)
trained, grown to 12 layers by every recipe (dus, block expansion, passthrough slices, stack_top,
stack_middle, scratch), probed, trained to T, correlated, reported. Only the sizes are shrunk
(width, steps, windows, and the corpus to KJV's first 120 chapters, a tenth of its text, which the
BPE encodes at every stage); the depth, recipes and ranges are the config's. (The 2x pool's recipes
differ only in their options, which the registry-wide growth tests cover; running it here would
double this file's compile time.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import invoke_ok
from laggrow import analysis
from laggrow.config import DataConfig
from laggrow.data import DOC_SEPARATOR, load_documents

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "upscale.yaml"
TINY_BASE = ["model.d_model=16", "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=32", "model.scan_layers=true",
             "data.seq_len=16", "data.bpe_vocab_size=300", "data.eval_batches=1", "data.eval_batch_size=4",
             "train.steps=6", "train.batch_size=2", "train.warmup_steps=2", "train.eval_every=6", "train.log_every=3"]
KJV_CHAPTERS = 120
TINY_POOL = {"lag_steps": 2, "final_steps": 4, "eval_points": 3, "eval_every": 1, "test_batches": 1}
# the recipes of the 1.5x pool that keep the base's function: they start at the base's selection loss
IDENTITY = ("llama-pro", "slices-zero-top")


def test_both_pools_pass_every_check_laggrow_run_makes_before_training():
    from laggrow.jobs.experiment import load_experiment

    experiment = load_experiment(CONFIG)
    assert {pool.name: pool.config.target["n_layers"] for pool in experiment.pools} == {"x1.5": 12, "x2": 16}
    assert all(len(pool.config.strategies) >= 6 for pool in experiment.pools)


@pytest.fixture(scope="module")
def upscaled(tmp_path_factory):
    """(OUT, the experiment file as run): configs/upscale.yaml's 1.5x pool with only its sizes shrunk."""
    tmp = tmp_path_factory.mktemp("upscale")
    raw = yaml.safe_load(CONFIG.read_text())
    raw["base"] = str(CONFIG.parent / raw["base"])
    corpus = tmp / "kjv-start.txt"  # one document per blank-line-separated paragraph
    corpus.write_text(DOC_SEPARATOR.join(load_documents(DataConfig(corpus="kjv"))[:KJV_CHAPTERS]))
    raw["base_set"] = [*TINY_BASE, f"data.corpus={corpus}"]
    raw["pools"] = {"x1.5": raw["pools"]["x1.5"]}
    for pool in raw["pools"].values():
        pool.update(TINY_POOL)
        pool["train"] = {**pool["train"], "batch_size": 2}
    raw["correlate"] = {**raw["correlate"], "bootstrap": 20, "halving": {"first": 1, "eta": 2}}
    raw["out"] = str(tmp / "out")
    path = tmp / "upscale.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    invoke_ok("run", path)
    return tmp / "out", raw


def test_every_recipe_is_probed_trained_to_T_and_reported(upscaled):
    out, raw = upscaled
    report = (out / "report.md").read_text()
    for name, pool in raw["pools"].items():
        assert f"## Pool `{name}`" in report
        labels = [e.get("label", e) if isinstance(e, dict) else e for e in pool["strategies"]]
        curves = analysis.load_curves(out / "pools" / name)
        assert sorted({c.strategy for c in curves.candidates}) == sorted(labels)
        assert curves.steps[-1] == TINY_POOL["final_steps"]
        grown = json.loads((out / "pools" / name / "config.json").read_text())  # the candidates' run config
        assert grown["model"]["n_layers"] == pool["target"]["n_layers"]


def test_the_identity_recipes_start_at_the_bases_selection_loss(upscaled):
    """Measured apart from the pool: `laggrow eval` of the base on the selection set's windows."""
    out, _ = upscaled
    base = json.loads(invoke_ok("eval", out / "base", "--on", "selection", "--json").output)
    curves = analysis.load_curves(out / "pools" / "x1.5")
    for label in IDENTITY:
        at_growth = [curves.loss[i, 0] for i, c in enumerate(curves.candidates) if c.strategy == label]
        assert at_growth and all(abs(x - base["loss"]) < 1e-5 for x in at_growth), label
    copies = [curves.loss[i, 0] for i, c in enumerate(curves.candidates) if c.strategy.startswith("dus")]
    assert copies and all(abs(x - base["loss"]) > 1e-4 for x in copies), "dus is not an identity"
