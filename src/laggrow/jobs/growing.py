"""Grow a trained run into a larger model and write it as a new run (`laggrow grow`).

    laggrow grow --from runs/small --strategy hypercloning+stack_middle \\
        --set model.n_layers=4 --set model.d_model=64 --set model.n_heads=8 --out runs/grown

The output is a laggrow run directory (config.json, checkpoints/ at step 0, the source's
tokenizer.json when it has one) plus growth.json: the strategy, the source, whether the growth
preserves the function, and the held-out loss of the small and of the grown model on the source
run's fixed evaluation batches. Every check runs before anything is written, and the run is
assembled in a temporary directory renamed at the end, so bad input leaves nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from laggrow import formats
from laggrow.errors import LaggrowError


def target_config(source, overrides: list[str] | None):
    """The source's run config with `--set` overrides applied and validated."""
    from laggrow.config import run_config_from_dict
    from laggrow.config_engine import apply_overrides

    return run_config_from_dict(apply_overrides(source.to_dict(), overrides), where="target")


def grow_run(source_dir: Path, strategy: str, out: Path, overrides: list[str] | None = None,
             optimizer_state: str = "reset", seed: int = 0, options: dict[str, Any] | None = None) -> dict:
    """Grow `source_dir` into a new run at `out`; returns the growth.json record. `options` are the
    strategy's (`ranges` may be YAML text, as `--ranges` gives it)."""
    from laggrow import run_dir, store
    from laggrow.resources import SEED_MAX

    options = {k: v for k, v in (options or {}).items() if v is not None}
    out = Path(out).absolute()
    # Every check that needs no weights, corpus or jax work comes first, cheapest first.
    store.check_new_dir(out, "--out")
    store.check_not_staged(out, "--out")
    store.check_outside_runs(out, "--out")
    if optimizer_state not in ("reset", "carry"):
        raise LaggrowError(f"--optimizer-state: expected 'reset' or 'carry', got {optimizer_state!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise LaggrowError(f"--seed: expected an integer in [0, 2**32 - 1], got {seed!r}")
    source_cfg = run_dir.read_run_config(source_dir, what="--from")
    target = target_config(source_cfg, overrides)  # refuses a target that cannot fit in memory
    from laggrow import growth  # imports jax: only once the cheap checks have passed
    if isinstance(options.get("ranges"), str):  # the command line's --ranges, as YAML text
        options["ranges"] = growth.recipes.ranges_from_text(options["ranges"])
    partner_dir = options.pop("partner", None)
    # Checks the options now; a partner run stands in as an empty tree until it is loaded.
    checked = {**options, **({"partner": {}} if partner_dir else {})}
    growth.check_request(source_cfg.model, target.model, strategy, checked)
    growth.transform.check_grows(source_cfg.model, target.model, "target (--set)")
    preserving = growth.is_function_preserving(strategy, **checked)
    if partner_dir is not None:
        run_dir.read_run_config(Path(partner_dir), what="--partner")

    import jax

    from laggrow import train
    from laggrow.checkpoint import Checkpointer

    source = run_dir.load_run(Path(source_dir), what="--from")
    if partner_dir is not None:
        options["partner"] = run_dir.load_run(Path(partner_dir), what="--partner").params
    key = jax.random.key(seed)
    params, opt_state = growth.grown_state(source.params, source.state["opt_state"], source.config.model,
                                          target.model, strategy, key, optimizer_state, target.train, **options)

    data = run_dir.load_source_dataset(source)  # refuses a corpus changed since the source's data.json
    batches = data.eval_batches(source.config.data.eval_batches, source.config.data.eval_batch_size)
    record = {
        "strategy": strategy,
        "source": str(source.path.absolute()),
        "source_step": int(source.state["step"]),
        # training the grown run continues the source's batch stream here (see jobs.training)
        "data_position": int(source.data_position),
        "function_preserving": preserving,
        "eval_loss_before": train.evaluate(source.params, source.config.model, batches),
        "eval_loss_after": train.evaluate(params, target.model, batches),
        "optimizer_state": optimizer_state,
        "seed": seed,
        "options": {**{k: v for k, v in options.items() if k != "partner"},
                    **({"partner": str(Path(partner_dir).absolute())} if partner_dir else {})},
        "params_before": source.config.model.n_params(),
        "params_after": target.model.n_params(),
        "eval_batches": [int(n) for n in batches.shape],
    }
    with store.staged_dir(out) as tmp:
        store.write_json(tmp / store.CONFIG_FILE, formats.with_version(target.to_dict()))
        # the grown run trains on the source's data: its tokenizer and its data fingerprint go along
        for name in (store.TOKENIZER_FILE, store.TOKENIZER_CONFIG_FILE, store.DATA_FILE):
            if (source.path / name).is_file():
                shutil.copyfile(source.path / name, tmp / name)
        state = {"params": params, "opt_state": opt_state, "step": jax.numpy.zeros((), jax.numpy.int32)}
        with Checkpointer(tmp) as ckpt:
            ckpt.save(state, data_position=source.data_position, step=0)
        store.write_json(tmp / store.GROWTH_FILE, record)
    return record
