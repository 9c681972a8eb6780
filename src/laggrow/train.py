"""Training: loss, optimizer and schedule, the one jitted train step, evaluation and the loop.

The train state is a plain dict `{"params", "opt_state", "step"}` so that it can be vmapped over
a leading candidate axis (probe), checkpointed by Orbax and grown by the growth transforms
without ever seeing a class of ours. The step is a pure function of (state, batch); its random
key is `fold_in(key(seed), step)`, so runs are reproducible and resumable.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from laggrow import interrupt, mesh, model
from laggrow.config import ModelConfig, TrainConfig
from laggrow.errors import LaggrowError
from laggrow.mesh import SINGLE, Layout

State = dict


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup to `lr` (from `warmup_start` at the first step, or from lr / warmup_steps when
    that is 0), `hold_steps` at `lr`, then cosine / linear decay to `lr * min_lr_ratio` over the
    remaining steps, or constant. Defined over `cfg.steps`, so a probe of k steps is exactly the
    prefix of a T-step run."""
    end = cfg.lr * cfg.min_lr_ratio
    decay_steps = max(cfg.steps - cfg.warmup_steps - cfg.hold_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if cfg.hold_steps > 0:
        decay = optax.join_schedules([optax.constant_schedule(cfg.lr), decay], [cfg.hold_steps])
    if cfg.warmup_steps == 0:
        return decay
    if cfg.warmup_start > 0:  # from the start rate at step 0 to lr at step warmup_steps, where the decay begins
        warmup = optax.linear_schedule(cfg.warmup_start, cfg.lr, cfg.warmup_steps)
    else:
        warmup = optax.linear_schedule(cfg.lr / cfg.warmup_steps, cfg.lr, cfg.warmup_steps - 1)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def decay_mask(params: dict) -> dict:
    """Weight decay on weights only: norm parameters (gpt's ln1, ln2, ln_f; llama's norm1, norm2,
    norm_f) and biases (llama's b_q, b_k, b_v) are left alone."""
    def is_weight(path, _leaf) -> bool:
        return not any(str(getattr(k, "key", "")).startswith(("ln", "norm", "b_")) for k in path)

    return jax.tree_util.tree_map_with_path(is_weight, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(make_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def restart_schedule(opt_state: Any) -> Any:
    """For an optimizer state carried through growth: Adam's moments keep their bias-correction
    count, but the grown model starts at step 0, so its learning-rate schedule restarts too."""
    return schedule_at(opt_state, 0)


def schedule_at(opt_state: Any, step: int) -> Any:
    """The optimizer state with its learning-rate schedule's count set to `step`, the rest kept:
    a fresh state for a model grown mid-run (stacking with `optimizer_state: reset`) restarts
    Adam's moments but must stay on the run's one schedule."""

    def place(node: Any) -> Any:
        if isinstance(node, optax.ScaleByScheduleState):
            return optax.ScaleByScheduleState(count=jnp.full_like(node.count, step))
        return node

    return jax.tree.map(place, opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))


def loss_fn(params: dict, batch: jax.Array, cfg: ModelConfig, dropout: float = 0.0,
            key: jax.Array | None = None) -> jax.Array:
    """Mean next-token cross-entropy (nats) of int batch (B, T+1); the same for train and eval
    (eval passes no dropout). With `cfg.loss_chunk` > 0 the (B*T, V) logits are never held whole
    (`chunked_cross_entropy`)."""
    inputs, labels = batch[:, :-1], batch[:, 1:]
    if cfg.loss_chunk == 0 or cfg.loss_chunk >= labels.size:
        logits = model.apply(params, inputs, cfg, dropout=dropout, key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    h = model.hidden(params, inputs, cfg, dropout=dropout, key=key)
    return chunked_cross_entropy(h, model.head_weight(params, cfg), labels.reshape(-1), cfg.loss_chunk)


def chunked_cross_entropy(h: jax.Array, w: jax.Array, labels: jax.Array, chunk: int) -> jax.Array:
    """Mean cross-entropy of logits `h @ w` (h: (N, D), w: (D, V), int labels (N,)), `chunk`
    tokens at a time: each chunk's logits are computed in h's dtype (the compute dtype, as the
    whole-logits path does), their log-sum-exp and the sum of losses in float32. The chunk is
    rematerialised in the backward pass (`jax.checkpoint`), so neither pass holds more than one
    chunk's (chunk, V) logits. N is padded to a multiple of `chunk`; padded tokens weigh 0."""
    n = labels.shape[0]
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    weights = jnp.ones((n,), jnp.float32)
    if pad:
        h = jnp.concatenate([h, jnp.zeros((pad, h.shape[1]), h.dtype)])
        labels = jnp.concatenate([labels, jnp.zeros((pad,), labels.dtype)])
        weights = jnp.concatenate([weights, jnp.zeros((pad,), jnp.float32)])

    @jax.checkpoint
    def chunk_loss(hc: jax.Array, yc: jax.Array, wc: jax.Array) -> jax.Array:
        logits = (hc @ w).astype(jnp.float32)  # (chunk, V): computed in h's dtype, like model.apply
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, yc[:, None], axis=-1)[:, 0]
        return ((lse - picked) * wc).sum()

    def body(total: jax.Array, xs) -> tuple[jax.Array, None]:
        return total + chunk_loss(*xs), None

    xs = (h.reshape(n_chunks, chunk, h.shape[1]), labels.reshape(n_chunks, chunk), weights.reshape(n_chunks, chunk))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total / n


def init_state(params: dict, optimizer: optax.GradientTransformation) -> State:
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def make_train_step(model_cfg: ModelConfig, train_cfg: TrainConfig) -> Callable:
    """The pure, un-jitted step `(state, batch) -> (state, metrics)`. Probe vmaps this same
    function over candidates; `jit_train_step` jits it for a single model."""
    optimizer = make_optimizer(train_cfg)
    schedule = make_schedule(train_cfg)

    base_key = jax.random.key(train_cfg.seed)

    def step_fn(state: State, batch: jax.Array) -> tuple[State, dict]:
        # The step's randomness is a function of (seed, step): reproducible, and a resumed run
        # draws exactly what the uninterrupted one would have.
        key = jax.random.fold_in(base_key, state["step"])
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, model_cfg, train_cfg.dropout, key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        if "lr_scale" in state:  # a per-candidate learning-rate multiplier (pools)
            updates = jax.tree.map(lambda u: u * state["lr_scale"].astype(u.dtype), updates)
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
        # Extra entries of the state (a pool's bookkeeping) ride along unchanged.
        return {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return step_fn


def jit_train_step(model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout = SINGLE) -> Callable:
    """Jitted once per (model, train) config and device layout, with the state donated: the old
    state's buffers are reused for the new one. Cached so that tests and repeated runs share the
    compilation."""
    return _jit_train_step(model_cfg, train_cfg, layout)  # one cache key, layout given or not


@functools.lru_cache(maxsize=16)
def _jit_train_step(model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout) -> Callable:
    return mesh.sharded_step(make_train_step(model_cfg, train_cfg), layout, stacked=False)


def window_losses(params: dict, batch: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Mean next-token cross-entropy (nats) of each window of an int batch (B, T+1): (B,). The
    evaluation's unit: the mean over windows is the held-out loss, and their spread its standard
    error. With `cfg.loss_chunk` the logits are taken in chunks, one window at a time."""
    inputs, labels = batch[:, :-1], batch[:, 1:]
    if cfg.loss_chunk == 0 or cfg.loss_chunk >= labels.size:
        logits = model.apply(params, inputs, cfg)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(axis=-1)
    b, t = labels.shape
    h = model.hidden(params, inputs, cfg).reshape(b, t, -1)
    w = model.head_weight(params, cfg)
    return jax.vmap(lambda hw, yw: chunked_cross_entropy(hw, w, yw, cfg.loss_chunk))(h, labels)


def make_eval(model_cfg: ModelConfig) -> Callable:
    """The pure `(params, batches (n, B, T+1)) -> (n * B,)` loss of every window of a stack of
    batches; jitted for one model by `jit_eval` and vmapped over candidates by the pool."""

    def evaluate(params: dict, batches: jax.Array) -> jax.Array:
        return jax.lax.map(lambda b: window_losses(params, b, model_cfg), batches).reshape(-1)

    return evaluate


def jit_eval(model_cfg: ModelConfig, layout: Layout = SINGLE) -> Callable:
    """Every window's loss over a stack of batches (n, B, T+1), one compiled program for the set."""
    return _jit_eval(model_cfg, layout)


@functools.lru_cache(maxsize=16)
def _jit_eval(model_cfg: ModelConfig, layout: Layout) -> Callable:
    return mesh.replicated_result(make_eval(model_cfg), layout)


def evaluate_windows(params: dict, model_cfg: ModelConfig, batches: np.ndarray | jax.Array,
                     layout: Layout = SINGLE) -> np.ndarray:
    """The loss of `params` on every window of fixed batches (n, B, T+1), as float64 (n * B,)."""
    if isinstance(batches, np.ndarray):
        batches = mesh.place_eval(batches, layout)
    return np.asarray(mesh.to_host(jit_eval(model_cfg, layout)(params, batches)), np.float64)


def evaluate(params: dict, model_cfg: ModelConfig, batches: np.ndarray | jax.Array,
             layout: Layout = SINGLE) -> float:
    """Held-out loss of `params` on fixed batches (n, B, T+1): the mean over their windows."""
    return float(evaluate_windows(params, model_cfg, batches, layout).mean())


def mean_and_se(windows: np.ndarray) -> tuple[float, float | None]:
    """The mean of per-window losses and its standard error over windows (sample sd / sqrt(n);
    None for a single window). Windows of one document are correlated, so this SE is a lower
    bound on the noise of which text was read."""
    windows = np.asarray(windows, np.float64)
    mean = float(windows.mean())
    return mean, (float(windows.std(ddof=1) / np.sqrt(len(windows))) if len(windows) > 1 else None)


# ---------------------------------------------------------------------------------------------
# The loop


class Diverged(LaggrowError):
    """The train loss or the gradient norm became non-finite: training cannot go on from here."""

    def __init__(self, step: int, quantity: str, value: float):
        super().__init__(f"{quantity} became {value} at step {step}")
        self.step, self.quantity, self.value = step, quantity, value


@dataclass
class History:
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # wall time of this call of train_loop
    # tokens/s from the end of the first step (its compile) to the end, evaluation and
    # checkpoints included; None when this call ran fewer than two steps
    steady_tokens_per_second: float | None = None

    @property
    def eval_losses(self) -> list[tuple[int, float]]:
        return [(r["step"], r["eval_loss"]) for r in self.records if "eval_loss" in r]

    @property
    def final_eval_loss(self) -> float | None:
        losses = self.eval_losses
        return losses[-1][1] if losses else None


def _check_finite(pending: list[tuple[int, dict]]) -> None:
    """Raise Diverged at the first step whose loss or gradient norm is not finite."""
    values = jax.device_get([(m["loss"], m["grad_norm"]) for _, m in pending])
    for (step, _), (loss, grad_norm) in zip(pending, values, strict=True):
        for quantity, value in (("train loss", loss), ("grad norm", grad_norm)):
            if not np.isfinite(value):
                raise Diverged(step, quantity, float(value))


def all_finite(tree) -> jax.Array:
    """One boolean: every element of every leaf is finite (a reduction, cheap next to a step).
    Traced inside the pool's step; jitted once (`_params_finite`) for a single run's saves."""
    return jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]).all()


_all_finite_jit = jax.jit(all_finite)


def _params_finite(params: dict) -> bool:
    # one compiled reduction: op by op, each leaf's isfinite and all would be dispatched (and
    # compiled, the first time) on its own
    return bool(mesh.to_host(_all_finite_jit(params)))


def train_loop(
    state: State,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    next_batch: Callable[[int], np.ndarray],
    eval_batches: np.ndarray,
    *,
    on_record: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[State], None] | None = None,
    stop_at: int | None = None,
    layout: Layout = SINGLE,
) -> tuple[State, History]:
    """Train from `state["step"]` to `train_cfg.steps` (or to `stop_at`, a pause that a resumed
    run continues exactly: the schedule is always that of `train_cfg.steps`). `next_batch(i)` is
    batch number i.

    A record (step, train_loss, tokens, flops, and eval_loss at eval steps) is made every
    `log_every` steps, at eval steps and at the last step, and passed to `on_record`.
    `on_checkpoint(state)` is called every `checkpoint_every` steps and at the end.

    Divergence: the loss and gradient norm of every step are checked (in one transfer, at each
    record and before each checkpoint, so the loop keeps a single host sync per record); the
    first non-finite one raises `Diverged` before it is recorded or saved, and a checkpoint is
    never made of parameters that are not finite.

    Interruption (inside `interrupt.deferred()`): after the step during which SIGINT/SIGTERM
    arrived, the state is checkpointed (unless it just was) and `interrupt.Interrupted` raised.

    `layout` spreads the run over devices (laggrow.mesh): each batch split over the data axis,
    the state replicated or, with FSDP, split too; the records are the same to float rounding.
    """
    step_fn = jit_train_step(model_cfg, train_cfg, layout)
    # jit keys its cache on whether arguments are committed to a device: Orbax restores committed
    # arrays, a fresh state is not. Committing every state to the default device (or placing it on
    # the layout's mesh) lets a resumed run reuse the compilation of the run it continues (one
    # trace per config, checked in tests).
    state = mesh.place_state(state, layout, stacked=False)
    held_out = mesh.place_eval(eval_batches, layout)
    seq_len = eval_batches.shape[-1] - 1
    tokens_per_step, flops_per_step = model_cfg.train_step_compute(train_cfg.batch_size, seq_len)
    history = History()
    start = int(state["step"])
    t_start = time.perf_counter()
    t_first: float | None = None  # when the first step (and its compile) had finished
    last_t, last_step = t_start, start
    stop = train_cfg.steps if stop_at is None else stop_at
    pending: list[tuple[int, dict]] = []  # steps whose metrics are not yet checked
    saved = start  # the step a checkpoint holds (the restored state's, or the last saved)
    for i in range(start, stop):
        state, metrics = step_fn(state, mesh.place_batch(next_batch(i), layout, stacked=False))
        step = i + 1
        pending.append((step, metrics))
        if t_first is None:
            jax.block_until_ready(metrics["loss"])
            t_first = time.perf_counter()
        is_last = step == stop
        do_eval = step % train_cfg.eval_every == 0 or step == train_cfg.steps
        do_record = step % train_cfg.log_every == 0 or do_eval or is_last
        do_save = on_checkpoint is not None and (
            is_last or bool(train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0))
        stopping = not is_last and interrupt.requested()
        if do_record or do_save or stopping:
            _check_finite(pending)  # blocks: the only host sync of the loop
            pending.clear()
        if do_record:
            now = time.perf_counter()
            record: dict[str, Any] = {
                "step": step,
                "train_loss": float(metrics["loss"]),
                "lr": float(metrics["lr"]),
                "grad_norm": float(metrics["grad_norm"]),
                "tokens": step * tokens_per_step,
                "flops": float(step * flops_per_step),
                "tokens_per_second": (step - last_step) * tokens_per_step / max(now - last_t, 1e-9),
            }
            last_t, last_step = now, step
            if do_eval:
                mean, se = mean_and_se(evaluate_windows(state["params"], model_cfg, held_out, layout))
                record["eval_loss"], record["eval_loss_se"] = mean, se
            history.records.append(record)
            if on_record is not None:
                on_record(record)
        if on_checkpoint is not None and (do_save or (stopping and saved != step)):
            if not _params_finite(state["params"]):
                raise Diverged(step, "a parameter", float("nan"))
            on_checkpoint(state)
            saved = step
        if stopping:
            raise interrupt.Interrupted(f"stopped after step {step} (checkpointed: step {saved})")
    if pending:
        _check_finite(pending)
    t_end = time.perf_counter()
    history.seconds = t_end - t_start
    if t_first is not None and stop - start >= 2:
        history.steady_tokens_per_second = (stop - start - 1) * tokens_per_step / max(t_end - t_first, 1e-9)
    return state, history
