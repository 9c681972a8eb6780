"""Generating text from a model: a key/value cache and one jitted loop (`laggrow sample`).

`generate(params, cfg, prompt_ids, n, ...)` returns the n token ids that follow a prompt, drawn
with a temperature and an optional top-k (temperature 0: greedy, the argmax), and `greedy` is its
temperature-0 form, what parity tests against other implementations call.

The cache holds every layer's keys and values, per key/value head (grouped-query attention keeps
K heads, not H): `k` and `v` of shape (L, 1, S, K, Dh) in the compute dtype, slot s holding
position s. S = P + n, P the model's context (`max_seq_len`) rounded up to the prefill chunk. One
jitted program does all of it: the prompt, padded to P, is prefilled once, `chunk` tokens at a
time (a `fori_loop` over as many chunks as the prompt needs, so a short prompt costs a chunk, not
the whole context), then a `fori_loop` over the new tokens runs one token through the layers,
writes its keys and values at its position and attends to slots 0..position. Because the padded
prompt, the cache and the loop have shapes fixed by (config, n, chunk), the program is traced and
compiled once for them (`TRACES` counts traces), whatever the prompt, seed, temperature or top-k.
Slots past a token's position (the prompt's padding, later tokens) are masked, and a padded
slot is overwritten by the generated token of that position before anything reads it.

The layers are model.py's own halves (`model.layer_halves`: norms, projections, RoPE at the
tokens' positions, then the output projection and the MLP), around `attention.attention_at`, the
written-out attention of training on CPU with a mask by position; so a cached step computes what
the full forward pass (`model.apply`) computes for that token (tested: greedy tokens equal a loop
that reruns `model.apply` on the whole sequence at every step, for gpt with learned and rotary
positions and for llama with grouped-query attention and tied embeddings).

Context: a prompt must fit the model's context (`max_seq_len` tokens). With learned positions
the new tokens must fit too (there is no embedding past `max_seq_len`). With RoPE they may go past
it: positions continue as RoPE defines them (as Hugging Face's `generate` does), on positions the
model never trained on (`past_context` says when; `laggrow sample` prints a warning).
"""

from __future__ import annotations

import collections
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from laggrow import attention, model
from laggrow.config import ModelConfig
from laggrow.errors import LaggrowError
from laggrow.resources import INT32_MAX, SEED_MAX, available_memory, human

PREFILL_CHUNK = 128  # prompt tokens per prefill step: a short prompt costs one chunk
DEFAULT_NEW_TOKENS = 64

# Traces of the generation program per (config, n, chunk): a test checks that varying the prompt,
# seed, temperature and top-k never traces it again.
TRACES: collections.Counter = collections.Counter()


def prefill_chunk(cfg: ModelConfig) -> int:
    return min(cfg.max_seq_len, PREFILL_CHUNK)


def _padded_prompt_length(cfg: ModelConfig, chunk: int) -> int:
    return -(-cfg.max_seq_len // chunk) * chunk


def past_context(cfg: ModelConfig, prompt_len: int, n: int) -> bool:
    """Whether generating n tokens after the prompt reaches positions past `max_seq_len`
    (possible with RoPE only: learned positions refuse it)."""
    return prompt_len + n > cfg.max_seq_len


def default_new_tokens(cfg: ModelConfig, prompt_len: int) -> int:
    """DEFAULT_NEW_TOKENS, or as many as fit the context with learned positions."""
    if cfg.pos_emb == "learned":
        return max(min(DEFAULT_NEW_TOKENS, cfg.max_seq_len - prompt_len), 1)
    return DEFAULT_NEW_TOKENS


def cache_bytes(cfg: ModelConfig, n: int, chunk: int | None = None) -> int:
    """What one generation holds besides the parameters: the cache's keys and values, and the
    float32 attention scores of a prefill chunk over it."""
    chunk = prefill_chunk(cfg) if chunk is None else chunk
    s = _padded_prompt_length(cfg, chunk) + n
    width = jnp.dtype(cfg.dtype).itemsize
    return 2 * cfg.n_layers * s * cfg.kv_heads * cfg.head_dim * width + 4 * chunk * cfg.n_heads * s


def check_request(cfg: ModelConfig, prompt_len: int, n: int, temperature: float = 0.0, top_k: int = 0,
                  seed: int = 0) -> None:
    """One line for what cannot be generated: an empty prompt, one longer than the context, new
    tokens past the context of learned positions, a bad temperature, top-k or seed, a cache that
    cannot fit in memory."""
    if prompt_len == 0:
        raise LaggrowError("--prompt: expected some text, got an empty prompt (it encodes to no tokens)")
    if prompt_len > cfg.max_seq_len:
        raise LaggrowError(f"--prompt: {prompt_len} tokens, longer than the model's context "
                           f"(model.max_seq_len = {cfg.max_seq_len}); expected at most {cfg.max_seq_len}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= INT32_MAX:
        raise LaggrowError(f"--max-tokens: expected an integer >= 1, got {n!r}")
    if cfg.pos_emb == "learned" and prompt_len + n > cfg.max_seq_len:
        raise LaggrowError(f"--max-tokens: {n} new tokens after a prompt of {prompt_len} pass the context of "
                           f"learned positions (model.max_seq_len = {cfg.max_seq_len}); expected at most "
                           f"{cfg.max_seq_len - prompt_len}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float | np.floating) \
            or not math.isfinite(temperature) or temperature < 0:
        raise LaggrowError(f"--temperature: expected a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 0 <= top_k <= cfg.vocab_size:
        raise LaggrowError(f"--top-k: expected an integer in [0, {cfg.vocab_size}] (the vocabulary; 0: all "
                           f"tokens), got {top_k!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= SEED_MAX:
        raise LaggrowError(f"--seed: expected an integer in [0, 2**32 - 1], got {seed!r}")
    need, have = cache_bytes(cfg, n), available_memory()
    if need > have:
        raise LaggrowError(f"--max-tokens: {n} new tokens need a key/value cache of about {human(need)}; "
                           f"{human(have)} of memory here; expected fewer tokens")


def generate(params: model.Params, cfg: ModelConfig, prompt_ids, n: int, *, temperature: float = 0.0,
             top_k: int = 0, seed: int = 0, chunk: int | None = None) -> np.ndarray:
    """The n token ids (int32 (n,)) that follow `prompt_ids` (a 1-D sequence of ints). Temperature
    0 is greedy (the first argmax); otherwise token i is drawn from softmax(logits / temperature)
    restricted to the `top_k` largest logits (0: all; tokens tied with the k-th are kept too), with
    the key fold_in(key(seed), i), so a seed gives the same text every time. `chunk`: prompt
    tokens per prefill step (default `prefill_chunk(cfg)`)."""
    ids = np.asarray(prompt_ids, np.int64).reshape(-1)
    check_request(cfg, len(ids), n, temperature, top_k, seed)
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        raise LaggrowError(f"prompt ids: expected token ids in [0, {cfg.vocab_size}), got {int(ids.min())}.."
                           f"{int(ids.max())}")
    chunk = prefill_chunk(cfg) if chunk is None else int(chunk)
    prompt = np.zeros((1, _padded_prompt_length(cfg, chunk)), np.int32)
    prompt[0, :len(ids)] = ids
    run = _compiled(cfg, int(n), chunk)
    out = run(params, prompt, np.int32(len(ids)), np.float32(temperature), np.int32(top_k), np.uint32(seed))
    return np.asarray(out)


def greedy(params: model.Params, cfg: ModelConfig, prompt_ids, n: int, *, chunk: int | None = None) -> np.ndarray:
    """The n greedy token ids (int32 (n,)) after `prompt_ids`: at every step the first argmax of
    the logits, the prompt and the tokens so far cached. What Hugging Face's
    `generate(do_sample=False)` returns after the prompt, for the same weights."""
    return generate(params, cfg, prompt_ids, n, temperature=0.0, chunk=chunk)


@functools.lru_cache(maxsize=16)
def _compiled(cfg: ModelConfig, n: int, chunk: int):
    return jax.jit(functools.partial(_generate, cfg=cfg, n=n, chunk=chunk))


def _generate(params, prompt, prompt_len, temperature, top_k, seed, *, cfg: ModelConfig, n: int, chunk: int):
    """The jitted program: prompt (1, P) int32 padded, prompt_len, temperature, top_k and seed
    traced scalars. Returns (n,) int32."""
    TRACES[(cfg, n, chunk)] += 1
    n_layers = jax.tree.leaves(params["blocks"])[0].shape[0]
    s = prompt.shape[1] + n
    shape = (n_layers, 1, s, cfg.kv_heads, cfg.head_dim)
    cache = {"k": jnp.zeros(shape, jnp.dtype(cfg.dtype)), "v": jnp.zeros(shape, jnp.dtype(cfg.dtype))}
    head = model.head_weight(params, cfg)
    last = prompt_len - 1

    def logits_of(row: jax.Array) -> jax.Array:  # (1, D) -> (V,), as model.forward computes them
        return (row @ head).astype(jnp.float32)[0]

    def prefill(c, carry):
        cache, logits = carry
        start = c * chunk
        h, cache = _forward_cached(params, jax.lax.dynamic_slice(prompt, (0, start), (1, chunk)), start, cache, cfg)
        row = jax.lax.dynamic_slice(h, (jnp.clip(last - start, 0, chunk - 1), 0), (1, h.shape[1]))
        return cache, jnp.where(last < start + chunk, logits_of(row), logits)

    n_chunks = (prompt_len + chunk - 1) // chunk
    cache, logits = jax.lax.fori_loop(0, n_chunks, prefill, (cache, jnp.zeros((cfg.vocab_size,), jnp.float32)))

    key = jax.random.key(seed)

    def pick(i, logits: jax.Array) -> jax.Array:
        return _choose(logits, temperature, top_k, jax.random.fold_in(key, i))

    def step(i, carry):
        cache, logits, out = carry
        token = pick(i, logits)
        h, cache = _forward_cached(params, token.reshape(1, 1), prompt_len + i, cache, cfg)
        return cache, logits_of(h), out.at[i].set(token)

    _, logits, out = jax.lax.fori_loop(0, n - 1, step, (cache, logits, jnp.zeros((n,), jnp.int32)))
    return out.at[n - 1].set(pick(n - 1, logits))


def _choose(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, key: jax.Array) -> jax.Array:
    """One token id from float32 logits (V,): the argmax at temperature 0, else a draw."""
    best = jnp.argmax(logits).astype(jnp.int32)
    shifted = logits - logits.max()  # the best at 0: a tiny temperature cannot overflow to inf
    kth = jnp.sort(shifted)[::-1][jnp.clip(top_k - 1, 0, logits.shape[0] - 1)]
    kept = jnp.where((top_k > 0) & (shifted < kth), -jnp.inf, shifted)
    drawn = jax.random.categorical(key, kept / jnp.where(temperature > 0, temperature, 1.0)).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, best)


def _forward_cached(params: model.Params, tokens: jax.Array, start, cache: dict, cfg: ModelConfig):
    """Tokens (1, T) at positions start..start+T-1 through every layer: their keys and values
    written into the cache at those slots, each attending to slots 0..its position. Returns the
    final normed hidden states (T, D) and the cache."""
    b, t = tokens.shape
    positions = start + jnp.arange(t, dtype=jnp.int32)
    # a padded prompt chunk may run past the learned table: those slots are never read
    table_rows = jnp.minimum(positions, cfg.max_seq_len - 1) if cfg.pos_emb == "learned" else None
    x = model.embed(params, tokens, cfg, table_rows)
    inputs, output = model.layer_halves(cfg)
    blocks = params["blocks"]

    def layer(x, weights, i, k_cache, v_cache):
        q, k, v = inputs(x, weights, cfg, b, t, positions)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, start, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, start, 0, 0))
        return output(x, attention.attention_at(q, k_cache, v_cache, positions), weights, i, cfg, b, t), \
            k_cache, v_cache

    n_layers = cache["k"].shape[0]
    if model.choose_scan(cfg.scan_layers, attention.runtime().backend):
        def body(x, xs):
            x, k_cache, v_cache = layer(x, *xs)
            return x, (k_cache, v_cache)

        x, (ks, vs) = jax.lax.scan(body, x, (blocks, jnp.arange(n_layers, dtype=jnp.int32), cache["k"], cache["v"]))
    else:
        ks, vs = cache["k"], cache["v"]
        for i in range(n_layers):
            x, k_cache, v_cache = layer(x, jax.tree.map(lambda w, i=i: w[i], blocks), i, ks[i], vs[i])
            ks, vs = ks.at[i].set(k_cache), vs.at[i].set(v_cache)
    return model.final_norm(params, x, cfg), {"k": ks, "v": vs}


# ---------------------------------------------------------------------------------------------
# A run on disk (`laggrow sample`)


def sample_run(run_dir, prompt: str, max_tokens: int | None = None, temperature: float = 1.0, top_k: int = 0,
               seed: int = 0) -> dict:
    """Continue `prompt` with the model of the finished run in `run_dir`, the prompt encoded with
    the run's own tokenizer (`run_dir.load_tokenizer`). `max_tokens` None: DEFAULT_NEW_TOKENS, or as
    many as fit the context with learned positions. Everything the user gave is checked, in one
    line each, before the checkpoint is read. Returns the prompt's ids, the new ids, the
    continuation's text and the whole text (prompt and continuation decoded together)."""
    from pathlib import Path

    from laggrow.run_dir import load_run, load_tokenizer, read_run_config, require_finished

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    require_finished(run_dir)
    tokenizer = load_tokenizer(run_dir, cfg)
    ids = np.asarray(tokenizer.encode(prompt), np.int64).reshape(-1)
    m = cfg.model
    if max_tokens is None:
        if m.pos_emb == "learned" and len(ids) == m.max_seq_len:
            raise LaggrowError(f"--prompt: {len(ids)} tokens leave no room in the context of learned positions "
                               f"(model.max_seq_len = {m.max_seq_len}); expected at most {m.max_seq_len - 1}")
        max_tokens = default_new_tokens(m, len(ids))
    check_request(m, len(ids), max_tokens, temperature, top_k, seed)
    run = load_run(run_dir)
    new = generate(run.params, m, ids, max_tokens, temperature=temperature, top_k=top_k, seed=seed)
    text = tokenizer.decode([*ids.tolist(), *new.tolist()])
    head = tokenizer.decode(ids.tolist())
    return {
        "run": str(run_dir),
        "prompt": prompt,
        "prompt_ids": ids.tolist(),
        "ids": new.tolist(),
        "completion": text[len(head):] if text.startswith(head) else tokenizer.decode(new.tolist()),
        "text": text,
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
        "top_k": int(top_k),
        "seed": int(seed),
        "past_context": past_context(m, len(ids), max_tokens),
        "max_seq_len": m.max_seq_len,
    }
