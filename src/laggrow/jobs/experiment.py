"""One LAG study from one file: train the base, probe each pool, train its finals, correlate, report.

    # configs/demo.yaml
    base: small.yaml                  # a run config (a relative path: from this file's directory)
    base_set: [train.steps=600]       # optional `section.key=value` overrides of the base config
    pool:                             # a pool exactly as pool/spec.py reads it, without `source`
      target: {n_layers: 8}
      strategies: [stack, zero_top, copy_zero, scratch]
      lag_steps: 32                   # k
      final_steps: 320                # T
    correlate: {threshold: 0.9, bootstrap: 1000, seed: 0}
    out: runs/demo                    # (relative to the working directory)

One base can be grown into several pools instead (one base grown to two depths: a pool has one
target, since its candidates share one step budget and are compared with one another): `pools:`
maps a name (`[a-z0-9][a-z0-9_.-]*`) to a pool mapping, exactly what `pool:` takes, in place of
`pool:` (one of the two, never both):

    pools:
      x1.5: {target: {n_layers: 12}, strategies: [stack, zero_top, scratch], lag_steps: 32, final_steps: 320}
      x2:   {target: {n_layers: 16}, strategies: [stack, copy_zero, scratch], lag_steps: 32, final_steps: 320}

`correlate:` applies to every pool. An experiment directory holds

    OUT/experiment.json   the resolved experiment (what `laggrow report` reads back)
    OUT/base/             the base run (laggrow train)          OUT/pool.yaml  the pool, source filled in
    OUT/pool/             the pool (laggrow probe / train-final / correlate)
    OUT/timings.json      seconds each stage took when it ran   OUT/report.md  written last

and with `pools:`, in place of pool.yaml and pool/, each pool's YAML beside its directory (as
pool.yaml is beside pool/), its figures and correlation inside it:

    OUT/pools/NAME.yaml   the pool NAME, source filled in       OUT/pools/NAME/  the pool NAME

The stages run pool by pool (the base, then each pool's probe, finals and correlation in the
file's order, then the report). Every stage is skipped when its record is on disk, so running the
same experiment again redoes nothing and an interrupted one resumes: the base and the finals from
their checkpoints, the probe from scratch (its output is staged and appears only when complete);
a pool added to `pools:` later is run, the others reused. Everything that can be wrong with the
input, in every pool, is found before anything is written or trained, and named by its key
(`pools.x2.strategies`). No rendering here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from laggrow import hosts, interrupt, store
from laggrow.config import RunConfig, run_config_from_dict
from laggrow.config_engine import apply_overrides, build_dataclass, parse_override, read_yaml
from laggrow.errors import LaggrowError
from laggrow.jobs.training import PreparedRun
from laggrow.pool import records
from laggrow.pool.spec import PoolConfig, pool_config_from_dict
from laggrow.store import BASE_DIR, CORRELATION_FILE, EXPERIMENT_FILE, POOL_DIR, POOLS_DIR, REPORT_FILE, TIMINGS_FILE

STAGES = ("base", "probe", "finals", "correlate", "report")

# the statistics rank strategies and correlate the rankings: a rank correlation needs three
MIN_STRATEGIES = 3


@dataclass(frozen=True)
class CorrelateOptions:
    """What `laggrow correlate` would be given: see analysis.correlate."""

    threshold: float = 0.9  # the little lag: the first step from which Spearman rho stays >= this
    # a pick is right when its regret is at most this (nats); by default, when it lands in the best set
    regret_tol: float | None = None
    # resamples (strategies, and seeds within each) for the rank correlations' 95% intervals; 0: none
    bootstrap: int = 1000
    seed: int = 0  # the bootstrap's and the tie-breaking's randomness
    predictor: str = "loss"  # what ranks the strategies at a step (analysis.predictors)
    halving: dict[str, int] = field(default_factory=dict)  # {first, eta}: replay successive halving

    def validate(self, where: str) -> CorrelateOptions:
        """The bounds `laggrow correlate` puts on its options (finite numbers come from coerce)."""
        from laggrow.resources import SEED_MAX, check_bootstrap

        if not -1 < self.threshold <= 1 or (self.regret_tol or 0) < 0:
            raise LaggrowError(f"{where}: expected threshold in (-1, 1] and regret_tol >= 0, "
                               f"got threshold {self.threshold}, regret_tol {self.regret_tol}")
        if not 0 <= self.seed <= SEED_MAX:
            raise LaggrowError(f"{where}.seed: expected an integer in [0, 2**32 - 1], got {self.seed}")
        check_bootstrap(self.bootstrap, 0, 0, 0, what=f"{where}.bootstrap")
        from laggrow.analysis.predictors import get_predictor

        try:
            get_predictor(self.predictor)
        except LaggrowError as err:
            raise LaggrowError(f"{where}.{err}") from None
        if self.halving:
            unknown = sorted(set(self.halving) - {"first", "eta"})
            if unknown or "first" not in self.halving:
                raise LaggrowError(f"{where}.halving: expected {{first: K0, eta: 2}}, got {self.halving!r:.60}")
        return self

    def check_fits(self, pool: PoolConfig, where: str) -> None:
        """The bootstrap's memory for this pool's strategies, seeds and evaluated steps."""
        from laggrow.resources import check_bootstrap

        check_bootstrap(self.bootstrap, len(pool.strategies), len(pool.eval_steps()), len(pool.seeds),
                        what=f"{where}.bootstrap")
        if self.halving:  # replayed on the curves: every round must decide on an evaluated step
            from laggrow.analysis.halving import halving_budgets

            try:
                budgets = [b for b, _ in halving_budgets(len(pool.strategies), self.halving.get("eta", 2),
                                                         self.halving["first"], pool.final_steps)]
            except LaggrowError as err:
                raise LaggrowError(f"{where}.{err}") from None
            missing = sorted(set(budgets) - set(pool.eval_steps()))
            if missing:
                raise LaggrowError(f"{where}.halving: its rounds end at steps {budgets}, of which "
                                   f"{missing} are not evaluated (expected them in pool.eval_at or the "
                                   "pool's eval_every grid)")


@dataclass(frozen=True)
class ExperimentConfig:
    base: str  # the base's run config (a relative path is read from the experiment file's directory)
    pool: dict[str, Any] | None = None  # one pool: a pool file's keys without source ...
    pools: dict[str, Any] | None = None  # ... or several, name -> pool (one base, several targets): one of the two
    base_set: list[str] = field(default_factory=list)  # `section.key=value` overrides of the base config
    correlate: dict[str, Any] = field(default_factory=dict)  # the correlate options below, for every pool
    out: str = ""  # the experiment directory (relative to the working directory); --out wins

    def record(self) -> dict[str, Any]:
        """As experiment.json holds it: the key of the two pool keys not given is left out, so
        the record of a one-pool experiment is what it always was."""
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in ("pool", "pools") and v is None)}


@dataclass(frozen=True)
class ExperimentPool:
    """One pool of an experiment and where it lives. `name` is None for the one pool of `pool:`."""

    name: str | None
    config: PoolConfig  # with `source` set to OUT/base
    directory: Path  # OUT/pool or OUT/pools/NAME
    yaml: Path  # beside it: OUT/pool.yaml or OUT/pools/NAME.yaml

    @property
    def key(self) -> str:
        return pool_key(self.name)


def pool_key(name: str | None) -> str:
    """How the experiment file names a pool: `pool`, or `pools.NAME` (what errors say)."""
    return "pool" if name is None else f"{POOLS_DIR}.{name}"


@dataclass
class Experiment:
    """An experiment checked against its inputs and its directory, ready to run."""

    path: Path
    out: Path
    config: ExperimentConfig
    base: RunConfig  # with the vocabulary filled in from the tokenizer
    pools: list[ExperimentPool]  # one unnamed (`pool:`), or every pool of `pools:` in the file's order
    correlate: CorrelateOptions
    base_run: PreparedRun  # the base checked against OUT/base, its corpus loaded

    @property
    def base_dir(self) -> Path:
        return self.out / BASE_DIR

    @property
    def several(self) -> bool:
        """Written with `pools:` (OUT/pools/NAME/), not `pool:` (OUT/pool/)."""
        return self.pools[0].name is not None


@dataclass(frozen=True)
class StageResult:
    stage: str
    reused: bool
    seconds: float = 0.0
    pool: str | None = None  # the pool's name, for a pool's stage of an experiment with `pools:`

    @property
    def label(self) -> str:
        """The stage as a display and timings.json name it: `probe`, or `probe x2` for pool x2."""
        return self.stage if self.pool is None else f"{self.stage} {self.pool}"


class Observer:
    """What a display is told while an experiment runs; the default shows nothing. `pool` is the
    name of the pool a stage is for (None: the base, the report, or the one pool of `pool:`)."""

    def stage_started(self, stage: str, detail: str, total_steps: int | None, done_steps: int = 0,
                      pool: str | None = None) -> None: ...
    def base_record(self, record: dict) -> None: ...
    def pool_eval(self, step: int, records: list[dict]) -> None: ...
    def stage_finished(self, result: StageResult) -> None: ...


# ---------------------------------------------------------------------------------------------
# Reading and checking


def load_experiment(path: Path, out: Path | None = None, overrides: list[str] | None = None) -> Experiment:
    """Read, resolve and check an experiment; raises LaggrowError (one line) and writes nothing."""
    from laggrow.jobs.training import prepare_run

    # its stages decide what to redo from what is on disk, which the processes would read at
    # different moments of process 0's writes: not spread yet
    hosts.require_one_process("laggrow run", "run its stages with laggrow train, probe and train-final")
    path = Path(path)
    where = f"experiment {path}"
    raw = _apply_overrides(read_yaml(path, what="experiment"), overrides)
    if "base" not in raw:
        raise LaggrowError(f"{where}: 'base' missing (expected base, pool or pools, and optionally "
                           "base_set, correlate, out)")
    cfg = build_dataclass(ExperimentConfig, raw, where)
    if (cfg.pool is None) == (cfg.pools is None):
        raise LaggrowError(f"{where}: {'both pool and pools' if cfg.pool is not None else 'neither pool nor pools'} "
                           "given (expected exactly one: pool, a pool mapping, or pools, a mapping of names to "
                           "pool mappings)")
    if not all(isinstance(item, str) for item in cfg.base_set):
        raise LaggrowError(f"{where}.base_set: expected a list of section.key=value strings, got {cfg.base_set!r}")
    options = build_dataclass(CorrelateOptions, cfg.correlate, f"{where} correlate").validate(f"{where} correlate")
    out = Path(out if out is not None else cfg.out or Path("runs") / path.stem).absolute()
    named = _pool_mappings(cfg, where)
    _check_out(out, list(named))

    base_raw = apply_overrides(read_yaml(base_config_path(path, cfg.base), what=f"{where} base"),
                               list(cfg.base_set))
    base_cfg = run_config_from_dict(base_raw, where=f"base {cfg.base}")
    base_dir = out / BASE_DIR
    try:  # the vocabulary comes from the tokenizer; an existing base run must match exactly
        base_run = prepare_run(base_cfg, base_dir, resume=(base_dir / store.CONFIG_FILE).is_file())
    except LaggrowError as err:
        raise LaggrowError(f"{where}: {err}; choose another out") from None
    base_cfg = base_run.config

    pools = [_check_pool(name, given, base_cfg, base_dir, out, options, where) for name, given in named.items()]
    experiment = Experiment(path, out, cfg, base_cfg, pools, options, base_run)
    for pool in pools:
        _check_probe_matches(experiment, pool)
    return experiment


def _pool_mappings(cfg: ExperimentConfig, where: str) -> dict[str | None, Any]:
    """The pools as given, by name (None: the one pool of `pool:`), their names checked."""
    if cfg.pools is None:
        return {None: cfg.pool}
    if not cfg.pools:
        raise LaggrowError(f"{where}.pools: expected a mapping of pool names to pool mappings, got an empty one")
    for name in cfg.pools:
        if not isinstance(name, str) or not re.fullmatch(store.POOL_NAME_PATTERN, name):
            raise LaggrowError(f"{where}.pools: pool name {name!r:.60} is not a short identifier (expected "
                               f"lowercase letters, digits and _ . -, starting with a letter or digit: "
                               f"{store.POOL_NAME_PATTERN})")
    return dict(cfg.pools)


def _check_pool(name: str | None, given: Any, base: RunConfig, base_dir: Path, out: Path,
                options: CorrelateOptions, where: str) -> ExperimentPool:
    """One pool checked as far as it can be without training: its keys, its strategies against the
    base, the statistics' needs. Errors name it as the experiment file does (`pools.x2.strategies`)."""
    from laggrow.pool import trainer

    key = f"{where} {pool_key(name)}"
    if not isinstance(given, dict) or "source" in given:
        raise LaggrowError(f"{key}: expected a pool mapping without 'source' (laggrow run fills it with the base run)")
    pool = pool_config_from_dict({**given, "source": str(base_dir)}, where=key)
    options.check_fits(pool, f"{where} correlate" if name is None else f"{key} correlate")
    try:
        trainer.check_pool(pool, base, pool.target_run_config(base))
    except LaggrowError as err:
        if name is None:
            raise
        raise LaggrowError(f"{key}: {err}") from None
    if len(pool.strategies) < MIN_STRATEGIES:  # found after all training otherwise, by the statistics
        raise LaggrowError(f"{key}.strategies: expected at least {MIN_STRATEGIES} strategies (laggrow run "
                           f"ranks them and correlates the rankings, and a rank correlation needs three), got "
                           f"{len(pool.strategies)}; use laggrow probe and train-final for a smaller pool")
    directory, yaml_name = store.experiment_pool_paths(name)
    return ExperimentPool(name, pool, out / directory, out / yaml_name)


def base_config_path(experiment: Path, base: str) -> Path:
    """The base run config an experiment names: a relative path is read from the experiment file's
    directory, so an experiment runs the same from any working directory."""
    given = Path(base).expanduser()
    return given if given.is_absolute() else Path(experiment).parent / given


def _apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """`--set key=value` for the experiment's own keys (`base_set=[train.steps=50]`), a pool of
    `pools:` by name (`pools.x2.lag_steps=8`, `pools.x2.train.lr=1e-3`), else `section.key=value`
    into a mapping (`pool.seeds=[1]`), as config.apply_overrides does."""
    nested = []
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if sep and key in {f.name for f in dataclasses.fields(ExperimentConfig)}:
            raw = {**raw, key: parse_override(item, text)}
        elif sep and key.startswith(f"{POOLS_DIR}.") and key.count(".") > 1:
            raw = _override_named_pool(raw, item, key.removeprefix(f"{POOLS_DIR}."), text)
        else:
            nested.append(item)
    return apply_overrides(raw, nested)


def _override_named_pool(raw: dict[str, Any], item: str, dotted: str, text: str) -> dict[str, Any]:
    """`--set pools.NAME.KEY=value`: NAME is the longest pool name of the file that `dotted`
    starts with (a name may hold dots: `x1.5`), KEY a pool key or `section.key` inside one."""
    pools = raw.get(POOLS_DIR)
    names = [n for n in pools if isinstance(n, str) and dotted.startswith(f"{n}.")] if isinstance(pools, dict) else []
    if not names:
        known = ", ".join(str(n) for n in pools) if isinstance(pools, dict) else "none"
        raise LaggrowError(f"--set {item!r:.80}: names no pool of the experiment's pools (expected "
                           f"pools.NAME.key=value with NAME one of: {known})")
    name = max(names, key=len)
    key = dotted[len(name) + 1:]
    pool = dict(pools[name]) if isinstance(pools[name], dict) else {}
    pool = apply_overrides(pool, [f"{key}={text}"]) if "." in key else {**pool, key: parse_override(item, text)}
    return {**raw, POOLS_DIR: {**pools, name: pool}}


def _check_out(out: Path, names: list[str | None]) -> None:
    """laggrow run writes only into a directory it made: experiment.json is written first of all,
    so a non-empty directory without it is the user's. Hidden entries do not count (a lock left by
    a run killed before it wrote experiment.json); nothing of the user's is ever removed anyway.
    A pool directory (of `names`: None for pool/, a name for pools/NAME/) without probe.json is not
    ours either: a probe appears only complete. Nor is an experiment of the other kind (pool/ for
    an experiment of `pools:`, or pools/ for one of `pool:`): its pools would go unreported."""
    if out.exists() and not out.is_dir():
        raise LaggrowError(f"out {out}: not a directory (expected a new or experiment directory)")
    store.check_writable_target(out, "out")
    store.check_outside_runs(out, "out")
    if out.is_dir() and not (out / EXPERIMENT_FILE).is_file() \
            and any(not entry.name.startswith(".") for entry in out.iterdir()):
        raise LaggrowError(f"out {out}: not empty and holds no {EXPERIMENT_FILE} (expected a new directory "
                           "or one written by laggrow run); choose another out")
    mine, other = ("pool", POOLS_DIR) if names == [None] else ("pools", POOL_DIR)
    if (out / EXPERIMENT_FILE).is_file() and ((out / other).exists() or (out / other).is_symlink()):
        raise LaggrowError(f"out {out}: holds {other}/, written by an experiment with "
                           f"{'pool' if other == POOL_DIR else 'pools'}: (this one has {mine}:); choose another out")
    for name in names:
        relative = store.experiment_pool_paths(name)[0]
        pool_dir = out / relative
        if (pool_dir.exists() or pool_dir.is_symlink()) and not (pool_dir / store.PROBE_FILE).is_file():
            raise LaggrowError(f"out {out}: {relative}/ holds no {store.PROBE_FILE}, so laggrow run did not write "
                               "it (a probe appears only complete); move it away or choose another out")


def _check_probe_matches(experiment: Experiment, pool: ExperimentPool) -> None:
    """A probe on disk must be of this very pool: the finals and the statistics continue it."""
    if not (pool.directory / store.PROBE_FILE).is_file():
        return
    probed = records.read_pool_record(pool.directory)["pool"]
    changed = records.changed_keys(probed, pool.config.to_dict(), ignore=("source",))
    if changed:
        raise LaggrowError(f"experiment {experiment.path}: {pool.key} changed since the probe in "
                           f"{pool.directory} ({', '.join(changed)}); choose another out")


def pool_yaml_text(experiment: Experiment, pool: ExperimentPool) -> str:
    raw = records.as_json(pool.config.to_dict())
    raw["strategies"] = [{"name": s["name"], "label": s["label"], "lr_scale": s["lr_scale"], **s["options"]}
                         for s in raw["strategies"]]
    return ("# written by laggrow run from " + str(experiment.path) + "; edit the experiment, not this\n"
            + yaml.safe_dump(raw, sort_keys=False))


def experiment_record(experiment: Experiment) -> dict[str, Any]:
    given = experiment.path.as_posix()
    out = experiment.out
    with contextlib.suppress(ValueError):  # as a user would type it, when under the working directory
        out = out.relative_to(Path.cwd())
    record = {"experiment_file": str(experiment.path.absolute()), "experiment_given": given,
              "out_given": out.as_posix(), "config": experiment.config.record(),
              "correlate": dataclasses.asdict(experiment.correlate), "base_dir": BASE_DIR}
    if experiment.several:  # their names in order; each lives in store.experiment_pool_paths(name)
        return {**record, "pools": [pool.name for pool in experiment.pools]}
    return {**record, "pool_dir": POOL_DIR}


# ---------------------------------------------------------------------------------------------
# Stages


def _timed(stage: str, out: Path, observer: Observer, work: Callable[[], None],
           pool: str | None = None) -> StageResult:
    t0 = time.perf_counter()
    work()
    result = StageResult(stage, reused=False, seconds=time.perf_counter() - t0, pool=pool)
    timings_file = out / TIMINGS_FILE
    timings = store.read_json(timings_file, "stage timings") if timings_file.is_file() else {}
    timings[result.label] = round(result.seconds, 1)
    store.write_json(timings_file, timings)
    observer.stage_finished(result)
    return result


def _reused(stage: str, observer: Observer, pool: str | None = None) -> StageResult:
    result = StageResult(stage, reused=True, pool=pool)
    observer.stage_finished(result)
    return result


def _stage_base(ex: Experiment, observer: Observer) -> StageResult:
    from laggrow.jobs.training import execute_run

    if (ex.base_dir / store.SUMMARY_FILE).is_file():
        return _reused("base", observer)
    run = ex.base_run
    m = run.config.model
    observer.stage_started("base", f"{m.n_params():,} params, {m.n_layers} layers x d={m.d_model}, "
                           f"{run.config.train.steps} steps", run.config.train.steps)
    return _timed("base", ex.out, observer, lambda: execute_run(run, on_record=observer.base_record))


def _stage_probe(ex: Experiment, pool: ExperimentPool, observer: Observer) -> StageResult:
    from laggrow.pool import trainer

    if (pool.directory / store.PROBE_FILE).is_file():
        return _reused("probe", observer, pool.name)
    # Never removed: load_experiment refused it already, unless it appeared since. A probe killed
    # outright leaves only its flocked staging directory, which the next probe removes.
    _check_out(ex.out, [p.name for p in ex.pools])
    n = len(pool.config.candidates())
    observer.stage_started("probe", f"{n} candidates, k={pool.config.lag_steps} of T={pool.config.final_steps}",
                           pool.config.lag_steps, pool=pool.name)
    return _timed("probe", ex.out, observer,
                  lambda: trainer.probe(pool.config, pool.directory, pool_file=pool.yaml, on_eval=observer.pool_eval),
                  pool.name)


def _stage_finals(ex: Experiment, pool: ExperimentPool, observer: Observer) -> StageResult:
    from laggrow.pool import trainer

    if (pool.directory / store.FINAL_FILE).is_file():
        return _reused("finals", observer, pool.name)
    # the finals continue the probe (or their own last checkpoint), so the bar starts at k
    observer.stage_started("finals", f"{len(pool.config.candidates())} candidates to T={pool.config.final_steps}",
                           pool.config.final_steps, done_steps=pool.config.lag_steps, pool=pool.name)
    return _timed("finals", ex.out, observer,
                  lambda: trainer.train_final(pool.directory, on_eval=observer.pool_eval), pool.name)


def correlation_is_current(ex: Experiment, pool: ExperimentPool) -> bool:
    """The pool's correlation.json exists, was made from the records now on disk (the sha256 of
    curves.jsonl, probe.json and final.json it recorded), with these options, by this version of
    the analysis (its schema). A correlation.json that cannot be read is made again, as a missing
    one would be: it is laggrow's output, not a record anything else is derived from."""
    from laggrow.analysis.correlation import SCHEMA
    from laggrow.analysis.curves import input_digests

    path = pool.directory / CORRELATION_FILE
    if not path.is_file():
        return False
    try:
        made = store.read_json(path, "correlation")
    except LaggrowError:
        return False
    if made.get("schema") != SCHEMA or made.get("inputs") != input_digests(pool.directory / store.CURVES_FILE):
        return False
    lag, boot, replayed = made.get("little_lag"), made.get("bootstrap"), made.get("halving")
    if not isinstance(lag, dict) or not isinstance(boot, dict) or not isinstance(replayed, dict | None):
        return False
    opts = ex.correlate
    halving = {"first": replayed.get("first"), "eta": replayed.get("eta")} if replayed else {}
    wanted = {"first": opts.halving["first"], "eta": opts.halving.get("eta", 2)} if opts.halving else {}
    return (lag.get("threshold"), lag.get("regret_tol"), boot.get("n"), boot.get("seed"), made.get("predictor"),
            halving) == (opts.threshold, opts.regret_tol, opts.bootstrap, opts.seed, opts.predictor, wanted)


def _stage_correlate(ex: Experiment, pool: ExperimentPool, observer: Observer) -> StageResult:
    if correlation_is_current(ex, pool):
        return _reused("correlate", observer, pool.name)

    def work() -> None:
        from laggrow.jobs.correlating import correlate_pool

        o = ex.correlate
        correlate_pool(pool.directory, threshold=o.threshold, regret_tol=o.regret_tol, n_boot=o.bootstrap,
                       seed=o.seed, predictor=o.predictor, halving=o.halving or None)

    observer.stage_started("correlate", f"bootstrap {ex.correlate.bootstrap}", None, pool=pool.name)
    return _timed("correlate", ex.out, observer, work, pool.name)


def _stage_report(ex: Experiment, observer: Observer, redone: bool) -> StageResult:
    from laggrow.report.writer import write_report

    if not redone and (ex.out / REPORT_FILE).is_file():
        return _reused("report", observer)
    observer.stage_started("report", str(ex.out / REPORT_FILE), None)
    return _timed("report", ex.out, observer, lambda: write_report(ex.out))


# What an interrupted stage leaves, for the one line that says how to continue.
_KEPT = {"base": "the base run's last checkpoint is kept", "probe": "the probe will start again",
         "finals": "the finals' last checkpoint is kept"}


def run_experiment(ex: Experiment, observer: Observer | None = None,
                   on_locked: Callable[[], None] | None = None) -> list[StageResult]:
    """Run every stage that has no record yet, in order (the base, then pool by pool its probe,
    finals and correlation, then the report), holding OUT's lock; returns what each stage did.
    `on_locked` is called once the lock is held (a display's header: a refused second process
    prints only its one line). A stop on request (Ctrl-C, SIGTERM) says how to continue."""
    observer = observer or Observer()
    with store.DirLock(ex.out, "experiment directory"):
        if on_locked is not None:
            on_locked()
        changed = store.write_json(ex.out / EXPERIMENT_FILE, experiment_record(ex), if_changed=True)
        for pool in ex.pools:
            store.ensure_dir(pool.yaml.parent, "out")
            store.write_text(pool.yaml, pool_yaml_text(ex, pool), if_changed=True)
        stages: list[tuple[str, ExperimentPool | None, Callable[[], StageResult]]] = \
            [("base", None, lambda: _stage_base(ex, observer))]
        for pool in ex.pools:
            stages += [("probe", pool, lambda p=pool: _stage_probe(ex, p, observer)),
                       ("finals", pool, lambda p=pool: _stage_finals(ex, p, observer)),
                       ("correlate", pool, lambda p=pool: _stage_correlate(ex, p, observer))]
        results: list[StageResult] = []
        for name, pool, stage in stages:
            try:
                results.append(stage())
            except interrupt.Interrupted:
                record = experiment_record(ex)
                where = f" of {pool.key}" if pool is not None and pool.name is not None else ""
                raise interrupt.Interrupted(
                    f"stopped in the {name} stage{where}, {_KEPT.get(name, 'nothing lost')}; continue with: "
                    f"laggrow run {record['experiment_given']} --out {record['out_given']}") from None
        # report.md again when a correlation was made again (every other stage leads to one), or
        # the experiment itself changed (a pool left out of `pools:` since)
        redone = changed or any(not r.reused for r in results if r.stage == "correlate")
        results.append(_stage_report(ex, observer, redone))
    return results
