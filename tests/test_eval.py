"""`laggrow eval`: a run's held-out loss on its own corpus (its recorded final loss) or another, in
nats per token and bits per byte; the bytes a tokenizer's tokens stand for."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from conftest import invoke_ok, one_line_failure
from laggrow import store
from laggrow.data import BPETokenizer, ByteTokenizer, predicted_bytes


def evaluate(run, *args) -> dict:
    return json.loads(invoke_ok("eval", run, *args, "--json").stdout)


def test_eval_on_the_runs_own_corpus_is_its_recorded_final_loss(tiny_base_run):
    summary = json.loads((tiny_base_run / store.SUMMARY_FILE).read_text())
    result = evaluate(tiny_base_run)
    assert result["set"] == "heldout" and result["corpus"] == "kjv" and result["tokenizer"] == "byte"
    assert result["loss"] == pytest.approx(summary["final_eval_loss"], rel=1e-6)
    # configs/tiny.yaml: 2 batches of 8 windows of 32 tokens, one byte each
    assert (result["windows"], result["tokens"], result["bytes"]) == (16, 512, 512)
    losses = np.asarray(result["window_losses"])
    assert losses.mean() == pytest.approx(result["loss"], rel=1e-6)
    assert result["loss_se"] == pytest.approx(losses.std(ddof=1) / 4, rel=1e-5)
    # bytes: bits per byte is nats per token / ln 2, and so is its standard error
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2), rel=1e-9)
    assert result["bits_per_byte_se"] == pytest.approx(result["loss_se"] / math.log(2), rel=1e-9)

    printed = invoke_ok("eval", tiny_base_run).stdout
    assert f"{result['loss']:.4f} ± {result['loss_se']:.4f} nats/token" in printed
    assert f"bits per byte  {result['bits_per_byte']:.4f}" in printed


def test_another_corpus_and_the_halves_of_the_held_out_set_give_other_numbers(tiny_base_run):
    own = evaluate(tiny_base_run)
    plays = evaluate(tiny_base_run, "--set", "data.corpus=shakespeare")
    assert plays["corpus"] == "shakespeare" and abs(plays["loss"] - own["loss"]) > 1e-3
    longer = evaluate(tiny_base_run, "--set", "data.corpus=shakespeare", "--set", "data.eval_batches=3")
    assert longer["windows"] == 24 and longer["loss"] != plays["loss"]
    halves = {on: evaluate(tiny_base_run, "--on", on)["loss"] for on in ("selection", "test")}
    assert len({own["loss"], *halves.values()}) == 3


def test_bytes_of_windows_are_the_utf8_bytes_of_the_text_they_predict():
    text = "Thou shalt not — naïve café, ﬁne: 我们 ✓\n" * 20
    bpe = BPETokenizer.train([text, "And God said, Let there be light."], vocab_size=300)
    for tok in (bpe, ByteTokenizer()):
        ids = tok.encode(text)
        assert tok.token_bytes()[ids].sum() == len(text.encode("utf-8"))
        windows = np.stack([ids[:9], ids[5:14]])  # each predicts its last 8 tokens
        expected = [len(tok.decode(ids[1:9]).encode()), len(tok.decode(ids[6:14]).encode())] \
            if tok is bpe else [8, 8]
        if tok is bpe:  # whole characters in these windows: decoding them gives the same bytes
            assert "\ufffd" not in tok.decode(ids[1:9]) + tok.decode(ids[6:14])
        assert predicted_bytes(tok, windows).tolist() == expected


@pytest.mark.parametrize("args, expected", [
    (["--set", "data.colour=1"], "data.colour: unknown key"),
    (["--set", "model.n_layers=4"], "--set model.…: only data.KEY=VALUE here"),
    (["--set", "data.tokenizer=bpe"], "data.tokenizer: the run's tokenizer is used"),
    (["--set", "data.seq_len=64"], "model.max_seq_len: expected at least data.seq_len (64)"),
    (["--set", "data.eval_batches=0"], "data.eval_batches: expected an integer >= 1"),
    (["--on", "train"], "--on: expected one of heldout, selection, test, got 'train'"),
])
def test_bad_eval_requests_are_one_line(tiny_base_run, args, expected):
    from typer.testing import CliRunner

    from laggrow.cli import app

    one_line_failure(CliRunner().invoke(app, ["eval", str(tiny_base_run), *args]), expected)


def test_eval_refuses_a_corpus_too_short_and_an_unfinished_run(tiny_base_run, tmp_path):
    from typer.testing import CliRunner

    from laggrow.cli import app

    short = tmp_path / "short.txt"
    short.write_text("In the beginning God created the heaven and the earth. " * 3)
    result = CliRunner().invoke(app, ["eval", str(tiny_base_run), "--set", f"data.corpus={short}"])
    one_line_failure(result, "split has")
    assert "shorter than one sequence" in result.output

    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_base_run, unfinished)
    (unfinished / store.SUMMARY_FILE).unlink()
    one_line_failure(CliRunner().invoke(app, ["eval", str(unfinished)]), "is unfinished")
