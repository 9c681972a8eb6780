"""`laggrow sample` and `laggrow.decode`: generation with a key/value cache in one jitted loop.

Greedy decoding with the cache is checked against a loop that reruns the whole forward pass
(`model.apply`) on the sequence so far at every step, for gpt with learned positions (a trained
run), gpt with RoPE and llama with grouped-query attention and tied embeddings (random weights,
large enough that the tokens vary), the prompt prefilled in several chunks, and RoPE positions
past model.max_seq_len. Each case compiles one generation program, which the other tests reuse.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from conftest import invoke_ok, one_line_failure
from laggrow import decode, model, run_dir, store
from laggrow.config import ModelConfig
from laggrow.growth.layout import flatten, unflatten

BASE = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, vocab_size=64, max_seq_len=24)
RANDOM = {
    "gpt.rope": dict(pos_emb="rope"),
    # scanned layers: the cache rides through lax.scan as the layer weights do
    "llama.gqa.tied": dict(arch="llama", pos_emb="rope", n_kv_heads=2, tie_embeddings=True, rope_theta=500.0,
                           scan_layers=True),
}
PROMPT = [3, 7, 1, 9, 22, 5, 40, 12, 8, 30]  # 10 tokens: three prefill chunks of 4
NEW = 20  # 10 + 20 = 30 positions: past max_seq_len (24) for RoPE
CHUNK = 4


def random_params(cfg: ModelConfig, seed: int = 1) -> dict:
    """Every leaf random and large (std 0.4), so that greedy tokens vary from step to step."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, spec in flatten(model.param_shapes(cfg)).items():
        x = rng.standard_normal(spec.shape).astype(np.float32)
        out[path] = 1 + 0.2 * x if path.endswith("scale") else 0.4 * x
    return unflatten(out)


@pytest.fixture(scope="module", params=sorted(RANDOM))
def random_case(request):
    cfg = dataclasses.replace(BASE, **RANDOM[request.param])
    return cfg, jax.device_put(random_params(cfg))


def full_pass_logits(params: dict, cfg: ModelConfig, length: int):
    """`logits(sequence)`: model.apply on the whole sequence so far (padded to `length`, one
    compilation; causal, so padding after the last token changes nothing), the last position's."""
    apply = jax.jit(lambda p, t: model.apply(p, t, cfg))

    def logits(sequence: list[int]) -> np.ndarray:
        buf = np.zeros((1, length), np.int32)
        buf[0, :len(sequence)] = sequence
        return np.asarray(apply(params, buf))[0, len(sequence) - 1]

    return logits


def naive_greedy(params: dict, cfg: ModelConfig, prompt: list[int], n: int) -> list[int]:
    logits = full_pass_logits(params, cfg, len(prompt) + n)
    sequence = list(prompt)
    for _ in range(n):
        sequence.append(int(np.argmax(logits(sequence))))
    return sequence[len(prompt):]


def test_greedy_with_the_cache_is_the_full_forward_pass_at_every_step(random_case):
    cfg, params = random_case
    cached = decode.greedy(params, cfg, PROMPT, NEW, chunk=CHUNK)
    expected = naive_greedy(params, cfg, PROMPT, NEW)
    assert cached.tolist() == expected
    assert len(set(expected)) >= 4  # tokens that vary: a cache read at the wrong slot would show
    assert decode.past_context(cfg, len(PROMPT), NEW)  # RoPE positions past max_seq_len agree too


def test_greedy_on_a_trained_gpt_run_with_learned_positions(tiny_base_run):
    run = run_dir.load_run(tiny_base_run)
    cfg = run.config.model
    assert cfg.pos_emb == "learned" and cfg.max_seq_len == 32
    prompt = run_dir.load_tokenizer(tiny_base_run).encode("And God said, Let").tolist()
    n = cfg.max_seq_len - len(prompt)  # the context filled exactly
    assert decode.greedy(run.params, cfg, prompt, n).tolist() == naive_greedy(run.params, cfg, prompt, n)


def test_a_seed_repeats_its_draw_and_top_k_1_and_temperature_0_are_greedy(random_case):
    cfg, params = random_case
    greedy = decode.greedy(params, cfg, PROMPT, NEW, chunk=CHUNK)

    def draw(**kw):
        return decode.generate(params, cfg, PROMPT, NEW, chunk=CHUNK, **kw).tolist()

    first = draw(temperature=1.0, seed=5)
    assert draw(temperature=1.0, seed=5) == first
    assert draw(temperature=1.0, seed=6) != first
    assert first != greedy.tolist()
    assert draw(temperature=1.0, top_k=1, seed=5) == greedy.tolist()
    assert draw(temperature=3.0, top_k=1, seed=9) == greedy.tolist()
    assert draw(temperature=0.0, top_k=7, seed=5) == greedy.tolist()


def test_top_k_draws_only_among_the_k_most_likely_tokens(random_case):
    cfg, params = random_case
    drawn = decode.generate(params, cfg, PROMPT, NEW, temperature=50.0, top_k=3, seed=2, chunk=CHUNK).tolist()
    logits = full_pass_logits(params, cfg, len(PROMPT) + NEW)
    sequence = list(PROMPT)
    ranks = []
    for token in drawn:
        order = np.argsort(-logits(sequence))
        ranks.append(int(np.nonzero(order == token)[0][0]))
        sequence.append(token)
    assert max(ranks) <= 2 and len(set(ranks)) >= 2  # within the top 3, and not just the first


def test_the_loop_is_traced_once_per_config_and_length(random_case):
    cfg, params = random_case
    for prompt, kw in [(PROMPT, {}), (PROMPT[:3], dict(temperature=0.7, seed=3)), (PROMPT * 2, dict(top_k=5)),
                       ([1], dict(temperature=2.0, top_k=2, seed=2**32 - 1))]:
        decode.generate(params, cfg, prompt, NEW, chunk=CHUNK, **kw)
    assert decode.TRACES[(cfg, NEW, CHUNK)] == 1


# ---- the command line ------------------------------------------------------------------------


def test_laggrow_sample_prints_the_runs_greedy_continuation(tiny_base_run):
    result = invoke_ok("sample", tiny_base_run, "--prompt", "In the beginning", "--temperature", "0", "--json")
    record = json.loads(result.stdout)
    prompt = list(b"In the beginning")
    assert record["prompt_ids"] == prompt
    assert len(record["ids"]) == 32 - len(prompt)  # the default: as many as fit the learned positions
    run = run_dir.load_run(tiny_base_run)
    assert record["ids"] == decode.greedy(run.params, run.config.model, prompt, len(record["ids"])).tolist()
    text = bytes(prompt + record["ids"]).decode("utf-8", errors="replace")
    assert record["text"] == text and record["completion"] == text[len("In the beginning"):]

    plain = invoke_ok("sample", tiny_base_run, "--prompt", "In the beginning", "--temperature", "0",
                      "--max-tokens", "5")
    assert plain.stdout == bytes(prompt + record["ids"][:5]).decode("utf-8", errors="replace") + "\n"
    seeded = [invoke_ok("sample", tiny_base_run, "--prompt", "God", "--seed", "4", "--top-k", "20",
                        "--max-tokens", "6").stdout for _ in range(2)]
    assert seeded[0] == seeded[1]


@pytest.mark.parametrize("args, expected", [
    (["--prompt", ""], "--prompt: expected some text, got an empty prompt"),
    (["--prompt", "x" * 33], "--prompt: 33 tokens, longer than the model's context (model.max_seq_len = 32)"),
    (["--prompt", "x" * 32], "--prompt: 32 tokens leave no room in the context of learned positions"),
    (["--prompt", "abc", "--max-tokens", "30"], "--max-tokens: 30 new tokens after a prompt of 3 pass the "
     "context of learned positions (model.max_seq_len = 32); expected at most 29"),
    (["--prompt", "abc", "--max-tokens", "0"], "--max-tokens: expected an integer >= 1, got 0"),
    (["--prompt", "abc", "--temperature", "-1"], "--temperature: expected a finite number >= 0"),
    (["--prompt", "abc", "--temperature", "nan"], "--temperature: expected a finite number >= 0"),
    (["--prompt", "abc", "--top-k", "-1"], "--top-k: expected an integer in [0, 256]"),
    (["--prompt", "abc", "--top-k", "257"], "--top-k: expected an integer in [0, 256]"),
    (["--prompt", "abc", "--seed", "-1"], "--seed: expected an integer in [0, 2**32 - 1]"),
])
def test_bad_sample_requests_are_one_line(tiny_base_run, args, expected):
    from typer.testing import CliRunner

    from laggrow.cli import app

    one_line_failure(CliRunner().invoke(app, ["sample", str(tiny_base_run), *args]), expected)


def test_sample_refuses_unfinished_runs_and_other_directories(tiny_base_run, tmp_path):
    from typer.testing import CliRunner

    from laggrow.cli import app

    def sample(run) -> str:
        return CliRunner().invoke(app, ["sample", str(run), "--prompt", "abc"])

    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_base_run, unfinished)
    (unfinished / store.SUMMARY_FILE).unlink()
    one_line_failure(sample(unfinished), f"is unfinished (no {store.SUMMARY_FILE}")
    one_line_failure(sample(tmp_path), "not a laggrow run")

    bpe = tmp_path / "bpe"  # a BPE run whose tokenizer is gone
    shutil.copytree(tiny_base_run, bpe)
    raw = json.loads((bpe / store.CONFIG_FILE).read_text())
    raw["data"]["tokenizer"] = "bpe"
    (bpe / store.CONFIG_FILE).write_text(json.dumps(raw))
    one_line_failure(sample(bpe), f"{store.TOKENIZER_FILE}: not found (expected the run's BPE tokenizer")
