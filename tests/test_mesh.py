"""The device layout: resolving the `mesh` section, which dimension FSDP splits, the section in
run and pool configs (never part of what a run is), and an impossible layout as one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import CONFIGS
from laggrow.config import MeshConfig, load_run_config, mesh_config_from_dict, with_mesh_overrides
from laggrow.errors import LaggrowError
from laggrow.mesh import Layout, leaf_spec, padded_size, resolve
from laggrow.pool.spec import pool_config_from_dict


@pytest.mark.parametrize(("cfg", "devices", "batch", "candidates", "want"), [
    (MeshConfig(), 1, 16, None, Layout(1, 1)),
    (MeshConfig(), 8, 16, None, Layout(1, 8)),  # a run: every device on the data axis
    (MeshConfig(), 8, 12, None, Layout(1, 6)),  # as many as divide the batch
    (MeshConfig(), 8, 16, 4, Layout(4, 2)),  # a pool: candidates first, the rest on data
    (MeshConfig(), 8, 16, 16, Layout(8, 1)),
    (MeshConfig(), 8, 16, 3, Layout(3, 2)),
    (MeshConfig(data=4), 8, 16, 16, Layout(2, 4)),  # data asked: candidates take what is left
    (MeshConfig(candidates=2, data=2), 8, 16, 9, Layout(2, 2)),
    (MeshConfig(data=4, fsdp=True), 8, 16, None, Layout(1, 4, True)),
    (MeshConfig(fsdp=True), 1, 16, None, Layout(1, 1, False)),  # nothing to split on one device
])
def test_resolve_chooses_the_layout(cfg, devices, batch, candidates, want):
    assert resolve(cfg, devices, batch, candidates) == want


@pytest.mark.parametrize(("cfg", "devices", "batch", "candidates", "message"), [
    (MeshConfig(data=2), 1, 16, None, "mesh: candidates 1 x data 2 = 2 devices, but 1 is present"),
    (MeshConfig(candidates=4, data=4), 8, 16, 8, "mesh: candidates 4 x data 4 = 16 devices, but 8 are present"),
    (MeshConfig(data=3), 8, 16, None, "mesh.data: 3 does not divide train.batch_size 16"),
    (MeshConfig(candidates=2), 8, 16, None, "mesh.candidates: 2 for a single training run"),
])
def test_an_impossible_layout_is_one_line(cfg, devices, batch, candidates, message):
    with pytest.raises(LaggrowError, match=message.replace(".", r"\.")) as err:
        resolve(cfg, devices, batch, candidates)
    assert "\n" not in str(err.value)


def test_a_chunk_is_padded_to_a_multiple_of_the_candidate_axis():
    assert [padded_size(n, Layout(4, 1)) for n in (1, 3, 4, 5, 8)] == [4, 4, 4, 8, 8]
    assert padded_size(5, Layout(1, 8)) == 5


def test_fsdp_splits_the_largest_dimension_the_data_axis_divides():
    from jax.sharding import PartitionSpec as P

    fsdp = Layout(1, 4, True)
    assert leaf_spec((2, 32, 128), fsdp, stacked=False) == P(None, None, "data")
    assert leaf_spec((256, 32), fsdp, stacked=False) == P("data")
    assert leaf_spec((3, 5), fsdp, stacked=False) == P()  # nothing divides: replicated
    assert leaf_spec((), fsdp, stacked=False) == P()
    # a pool: the candidate axis first, FSDP on the rest
    assert leaf_spec((4, 2, 32, 128), Layout(2, 4, True), stacked=True) == P("candidates", None, None, "data")
    assert leaf_spec((4, 64), Layout(2, 1), stacked=True) == P("candidates")
    # a whole pool the candidate axis does not divide is held whole on that axis
    assert leaf_spec((3, 64), Layout(2, 1), stacked=True) == P(None)


@pytest.mark.parametrize(("raw", "message"), [
    ({"data": 0}, "mesh.data: expected an integer >= 1 or 'auto', got 0"),
    ({"candidates": "many"}, "mesh.candidates: expected an integer >= 1 or 'auto'"),
    ({"candidates": True}, "mesh.candidates: expected an integer >= 1 or 'auto'"),
    ({"fsdp": "yes"}, "mesh.fsdp: expected true or false"),
    ({"dat": 2}, "mesh.dat: unknown key (did you mean 'data'?)"),
    ([2, 2], "mesh: expected a mapping (candidates, data, fsdp)"),
])
def test_a_bad_mesh_section_is_one_line(raw, message):
    with pytest.raises(LaggrowError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        mesh_config_from_dict(raw)


def test_the_mesh_section_is_where_a_run_trains_not_what_it_is(tmp_path):
    cfg = load_run_config(CONFIGS / "tiny.yaml", ["mesh.data=2", "mesh.fsdp=true"])
    assert cfg.mesh == MeshConfig(data=2, fsdp=True)
    assert "mesh" not in cfg.to_dict()
    assert cfg.to_dict() == load_run_config(CONFIGS / "tiny.yaml").to_dict()


def test_a_pool_records_its_mesh_only_when_set():
    base = {"source": "runs/x", "strategies": ["stack"], "lag_steps": 2, "final_steps": 4, "eval_points": 3}
    plain = pool_config_from_dict(base)
    assert "mesh" not in plain.to_dict()  # pools probed before the mesh keep their fingerprint
    spread = pool_config_from_dict({**base, "mesh": {"candidates": 2}})
    assert spread.to_dict()["mesh"] == {"candidates": 2, "data": "auto", "fsdp": False}
    with pytest.raises(LaggrowError, match="pool.mesh.data: expected an integer >= 1"):
        pool_config_from_dict({**base, "mesh": {"data": -1}})


def test_mesh_overrides_take_only_mesh_keys():
    assert with_mesh_overrides(MeshConfig(), ["mesh.data=2"]) == MeshConfig(data=2)
    with pytest.raises(LaggrowError, match=r"only mesh\.KEY=VALUE here"):
        with_mesh_overrides(MeshConfig(), ["train.lr=0.1"])


def test_laggrow_train_refuses_more_devices_than_present_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(_app(), ["train", str(CONFIGS / "tiny.yaml"), "--out", str(out),
                                         "--set", "mesh.data=2"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: mesh: candidates 1 x data 2 = 2 devices, but 1 is present (expected at most 1 in all)"]
    assert not out.exists()


def test_laggrow_probe_refuses_an_impossible_layout_and_writes_nothing(tmp_path, tiny_base_run):
    pool = tmp_path / "pool.yaml"
    pool.write_text(json.dumps({"source": str(tiny_base_run), "target": {"n_layers": 3},
                                "strategies": ["stack"], "lag_steps": 2, "final_steps": 4, "eval_points": 3}))
    out = tmp_path / "pool"
    runner = CliRunner()
    result = runner.invoke(_app(), ["probe", str(pool), "--out", str(out), "--set", "mesh.candidates=4"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: mesh: candidates 4 x data 1 = 4 devices")
    assert not out.exists()
    result = runner.invoke(_app(), ["probe", str(pool), "--out", str(out), "--set", "train.lr=1"])
    assert result.exit_code == 2 and "only mesh.KEY=VALUE here" in result.output
    assert not out.exists()


def _app():
    from laggrow.cli import app

    return app


def test_laggrow_train_final_refuses_an_impossible_layout_and_writes_nothing(tmp_path, tiny_base_run):
    pool = tmp_path / "pool.yaml"
    pool.write_text(json.dumps({"source": str(tiny_base_run), "target": {"n_layers": 3},
                                "strategies": ["stack"], "lag_steps": 2, "final_steps": 4, "eval_points": 3}))
    probed = tmp_path / "pool"
    runner = CliRunner()
    assert runner.invoke(_app(), ["probe", str(pool), "--out", str(probed)]).exit_code == 0
    from laggrow import store

    def written():  # the pool directory's lock file aside, which every train-final takes
        return sorted(p.relative_to(probed) for p in probed.rglob("*") if p.name != store.LOCK_FILE)

    before = written()
    for bad, message in ((["--set", "mesh.data=2"], "error: mesh: candidates 1 x data 2 = 2 devices, but 1 is present"),
                         (["--set", "train.lr=1"], "error: --set train.…: only mesh.KEY=VALUE here")):
        result = runner.invoke(_app(), ["train-final", str(probed), *bad])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), lines
        # nothing written: no final state, no final ranking, no records
        assert written() == before
