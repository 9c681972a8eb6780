"""The Hugging Face round trip of configs/small-llama.yaml, tiny: train a Llama-family model with a
BPE on the bundled corpus's first 120 chapters (the whole Bible, tokenized by each command, took most
of the test's time), export it (and load it in transformers when the `hf` extra is there),
import it back, run a pool of depth strategies from the import, and export the pool's winner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import CONFIGS, invoke_ok, one_line_failure
from laggrow import run_dir, store, train
from test_hf import HAVE_TORCH, hf_tensors, load_in_transformers, logits, sets, transformers_logits

TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=64",
        "data.bpe_vocab_size=300", "data.seq_len=32", "data.eval_batches=1", "data.eval_batch_size=4",
        "train.steps=6", "train.batch_size=4", "train.warmup_steps=1", "train.eval_every=3", "train.log_every=3",
        "train.checkpoint_every=0"]
TEXT = "In the beginning God created the heaven and the earth."


def test_train_export_import_and_grow_a_small_llama_in_a_pool(tmp_path):
    from tokenizers import Tokenizer

    from laggrow import data
    from laggrow.config import DataConfig

    corpus = tmp_path / "kjv-part.txt"
    corpus.write_text(data.DOC_SEPARATOR.join(data.load_documents(DataConfig(corpus="kjv"))[:120]))
    tiny = [*TINY, f"data.corpus={corpus}"]
    run, hf = tmp_path / "run", tmp_path / "hf"
    invoke_ok("train", CONFIGS / "small-llama.yaml", "--out", run, *sets(tiny))
    trained = run_dir.load_run(run)
    assert trained.config.data.tokenizer == "bpe" and trained.config.model.arch == "llama"

    invoke_ok("export", run, "--out", hf)
    ids = np.random.default_rng(0).integers(0, trained.config.model.vocab_size, (2, 16))
    ours = logits(trained.params, ids, trained.config.model)
    # the exported tokenizer is the run's BPE, as `tokenizers` reads it
    bpe = run_dir.load_tokenizer(run)
    assert Tokenizer.from_file(str(hf / store.TOKENIZER_FILE)).encode(TEXT).ids == bpe.encode(TEXT).tolist()
    if HAVE_TORCH:
        import transformers

        np.testing.assert_allclose(transformers_logits(load_in_transformers(hf), ids), ours, rtol=0, atol=1e-4)
        assert transformers.AutoTokenizer.from_pretrained(hf).encode(TEXT) == bpe.encode(TEXT).tolist()

    # imported back on the same corpus: the same weights, and the very token streams it trained on
    # (a tokenizer without EOS or BOS separates documents by a blank line, as laggrow trained it)
    imported = tmp_path / "imported"
    invoke_ok("import", hf, "--out", imported, *sets([i for i in tiny if i.startswith(("data.", "train."))
                                                      and "bpe_vocab_size" not in i]))
    back = run_dir.load_run(imported)
    for path in ("embed/tokens", "blocks/attn/w_k", "blocks/mlp/w_down", "head/w"):
        node_a, node_b = trained.params, back.params
        for part in path.split("/"):
            node_a, node_b = node_a[part], node_b[part]
        np.testing.assert_array_equal(np.asarray(node_b), np.asarray(node_a), err_msg=path)
    then, now = (json.loads((d / store.DATA_FILE).read_text()) for d in (run, imported))
    assert (now["train_sha256"], now["heldout_sha256"]) == (then["train_sha256"], then["heldout_sha256"])
    assert json.loads((imported / store.IMPORT_FILE).read_text())["tokenizer"]["separator"] == "text"

    # a pool of depth strategies from the import continues its stream from position 0
    pool = {"source": str(imported), "target": {"n_layers": 3}, "strategies": ["copy_zero", "zero_top", "stack"],
            "seeds": [0], "lag_steps": 2, "final_steps": 3, "eval_points": 2, "test_batches": 1,
            "train": {"lr": 0.003, "warmup_steps": 1}}
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(pool))
    out = tmp_path / "pool"
    invoke_ok("probe", tmp_path / "pool.yaml", "--out", out)
    invoke_ok("train-final", out)
    meta = json.loads((out / store.POOL_FILE).read_text())
    assert meta["data_stream"]["start"] == 0
    data = run_dir.load_source_dataset(back)
    selection = train.evaluate(back.params, back.config.model,
                               data.selection_batches(back.config.data.eval_batches, back.config.data.eval_batch_size))
    init = {r["strategy"]: r["eval_loss"] for r in store.read_jsonl(out / store.CURVES_FILE, "records")
            if r["step"] == 0}
    assert init["copy_zero"] == pytest.approx(selection, abs=1e-5) and abs(init["stack"] - selection) > 1e-4

    # LAG's choice at T, exported: its tensors are the candidate's, as the pool left it
    result = one_line_failure(_invoke("export", out, "--out", tmp_path / "nope"), "expected --candidate N")
    assert "0 to 2" in result
    best = json.loads((out / store.FINAL_FILE).read_text())["candidates"][0]["candidate"]
    chosen = tmp_path / "chosen"
    invoke_ok("export", out, "--out", chosen, "--candidate", best)
    record = json.loads((chosen / store.EXPORT_FILE).read_text())
    assert record["candidate"] == best and record["model"]["n_layers"] == 3
    assert len([k for k in hf_tensors(chosen) if k.endswith("q_proj.weight")]) == 3
    again = tmp_path / "chosen-imported"
    small = tmp_path / "small.txt"  # its weights are what is compared; a small corpus imports quickly
    small.write_text("\n\n".join(["And God said, Let there be light: and there was light."] * 100))
    invoke_ok("import", chosen, "--out", again, "--set", f"data.corpus={small}", "--set", "data.seq_len=32")
    final_test = json.loads((out / store.FINAL_FILE).read_text())["candidates"][0]["test_loss"]
    model_back = run_dir.load_run(again)
    test = data.test_batches(1, back.config.data.eval_batch_size)
    assert train.evaluate(model_back.params, model_back.config.model, test) == pytest.approx(final_test, abs=1e-5)


def _invoke(*args):
    from typer.testing import CliRunner

    from laggrow.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])
