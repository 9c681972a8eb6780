"""laggrow import and export against Hugging Face's own files (issue 21).

The fixtures (tests/fixtures/hf/, made by make_fixtures.py with transformers) are tiny random
models of every supported model_type with the logits and greedy tokens transformers computed for
them. Without torch, the suite checks laggrow against those committed numbers: an imported
model's logits equal transformers' within 1e-4, import then export gives back every tensor bit for
bit, a function-preserving depth growth keeps transformers' logits, and bad input is one line.
With the `hf` extra installed, the tests marked `torch` also regenerate the fixtures and compare
them, and load laggrow's exports in transformers itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import finish, invoke_ok, one_line_failure, start_laggrow
from laggrow import model, run_dir, store
from laggrow.config import DataConfig
from laggrow.data import load_documents, split_documents

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf"
NAMES = ("llama", "llama-tied-bf16", "mistral", "qwen2")
DATA = ["data.seq_len=32", "data.eval_batches=1", "data.eval_batch_size=4", "train.steps=4", "train.batch_size=4",
        "train.warmup_steps=1", "train.eval_every=2", "train.log_every=2"]

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs the hf extra (torch, transformers): "
                                 "pip install -e '.[dev,hf]'")


def sets(items: list[str]) -> list[str]:
    return [part for item in items for part in ("--set", item)]


def reference(name: str) -> dict:
    return json.loads((FIXTURES / name / "reference.json").read_text())


def hf_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face directory's safetensors files, read with safetensors."""
    from safetensors import safe_open

    out = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            for key in handle.keys():
                assert key not in out, key
                out[key] = handle.get_tensor(key)
    return out


def logits(params: dict, ids, cfg) -> np.ndarray:
    """laggrow's logits, one compiled program per model and shape."""
    import jax

    return np.asarray(jax.jit(model.apply, static_argnums=2)(params, np.asarray(ids, np.int32), cfg))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small text corpus (the first 60 chapters of the KJV), so that tokenizing is quick."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(load_documents(DataConfig(corpus="kjv"))[:60]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory, corpus) -> dict[str, Path]:
    """Every fixture imported once, `--dtype keep`."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name in NAMES:
        out[name] = root / name
        invoke_ok("import", FIXTURES / name / "model", "--out", out[name], *sets([f"data.corpus={corpus}", *DATA]))
    return out


# ---- parity with transformers, from the committed fixtures (no torch) -----------------------------


@pytest.mark.parametrize("name", NAMES)
def test_imported_logits_equal_what_transformers_computed(imported, name):
    ref = reference(name)
    run = run_dir.load_run(imported[name])
    want = np.load(FIXTURES / name / ref["logits"]["file"])
    got = logits(run.params, ref["input_ids"], run.config.model)
    assert got.shape == tuple(ref["logits"]["shape"]) and np.abs(want).max() > 1  # logits of some size
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # and transformers' greedy continuation is laggrow's argmax at every step: a causal model's
    # logits at position t read tokens up to t only, so one pass over the output checks each step
    output, start = ref["generate"]["output"][0], len(ref["generate"]["prompt"][0])
    assert len(output) == start + ref["generate"]["max_new_tokens"]
    at = logits(run.params, [output], run.config.model)[0]
    assert [int(at[t - 1].argmax()) for t in range(start, len(output))] == output[start:]


@pytest.mark.parametrize("name", NAMES)
def test_laggrow_sample_greedy_is_transformers_greedy_generate(imported, name):
    """`laggrow sample --temperature 0`'s loop (the key/value cache, one compiled loop) continues
    the prompt with exactly the tokens transformers' `generate(do_sample=False)` gave."""
    from laggrow import decode

    ref = reference(name)["generate"]
    run = run_dir.load_run(imported[name])
    new = decode.greedy(run.params, run.config.model, ref["prompt"][0], ref["max_new_tokens"])
    assert [int(t) for t in new] == ref["new_tokens"][0]


@pytest.mark.parametrize("name", NAMES)
def test_import_then_export_gives_back_every_tensor_bit_for_bit(imported, tmp_path, name):
    source = FIXTURES / name / "model"
    hf = json.loads((source / store.CONFIG_FILE).read_text())
    dtype = "bfloat16" if hf["dtype"] == "bfloat16" else "float32"
    sharded = (source / store.HF_WEIGHTS_INDEX).is_file()
    out = tmp_path / "export"
    invoke_ok("export", imported[name], "--out", out, "--dtype", dtype, *(["--shard-size", "40KB"] if sharded else []))
    want, got = hf_tensors(source), hf_tensors(out)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert got[key].tobytes() == want[key].tobytes(), key
    assert (out / store.HF_WEIGHTS_INDEX).is_file() == sharded
    exported = json.loads((out / store.CONFIG_FILE).read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert exported[key] == hf[key], key
    assert exported["rope_parameters"]["rope_theta"] == hf["rope_parameters"]["rope_theta"] == exported["rope_theta"]
    assert exported["model_type"] == ("qwen2" if name == "qwen2" else "llama")  # mistral without a window is llama
    assert (out / store.TOKENIZER_FILE).read_bytes() == (source / store.TOKENIZER_FILE).read_bytes()
    assert json.loads((out / store.EXPORT_FILE).read_text())["source"] == str(imported[name])


def test_an_imported_run_records_its_origin_and_trained_nothing(imported):
    run = imported["mistral"]
    record = json.loads((run / store.IMPORT_FILE).read_text())
    source = FIXTURES / "mistral" / "model"
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.glob("model*.safetensors*")}
    assert len(files) == 5 and record["weights"]["files"] == files  # four shards and their index
    assert record["model_type"] == "mistral" and record["source"] == str(source)
    assert record["trained_steps"] == 0 and record["data_position"] == 0
    assert set(record["dtype"]["stored"].values()) == {"float32"}
    assert not (run / store.SUMMARY_FILE).exists() and not (run / store.METRICS_FILE).exists()
    assert run_dir.require_finished(run) is None  # a whole model, as a freshly grown one
    # the fixture's tokenizer_config.json names no special token: EOS came from config.json
    assert record["tokenizer"]["tokenizer_config_filled_from_config_json"] is True
    assert json.loads((run / store.TOKENIZER_CONFIG_FILE).read_text())["eos_token"] == "<|endoftext|>"
    bf16 = json.loads((imported["llama-tied-bf16"] / store.IMPORT_FILE).read_text())
    assert set(bf16["dtype"]["stored"].values()) == {"bfloat16"}


def test_the_corpus_is_tokenized_by_the_model_with_eos_after_every_document(imported, corpus):
    """The imported run's token streams are the model's tokenizer run over each document, EOS (id 0)
    after each: computed here with `tokenizers` alone, and found in the run's dataset and data.json."""
    from tokenizers import Tokenizer

    run = imported["llama"]
    cfg = run_dir.read_run_config(run)
    tok = Tokenizer.from_file(str(FIXTURES / "llama" / "model" / store.TOKENIZER_FILE))
    train_docs, heldout_docs = split_documents(load_documents(cfg.data), cfg.data.heldout_fraction,
                                               cfg.data.split_seed)
    def stream(docs: list[str]) -> list[int]:
        return [i for doc in docs for i in [*tok.encode(doc, add_special_tokens=False).ids, 0]]

    want = stream(train_docs)
    data = run_dir.load_source_dataset(run)
    assert data.train.tolist() == want and data.heldout.tolist() == stream(heldout_docs)
    fingerprint = json.loads((run / store.DATA_FILE).read_text())
    assert fingerprint["tokenizer"] == "hf" and fingerprint["train_tokens"] == len(want)
    # the one function that gives a run's tokenizer (laggrow sample reads it), corpus unread
    loaded = run_dir.load_tokenizer(run)
    assert loaded.eos_id == 0 and loaded.encode(train_docs[0]).tolist() == want[:want.index(0)]
    assert loaded.decode(tok.encode("In the beginning").ids) == "In the beginning"


def test_a_function_preserving_depth_growth_of_an_import_keeps_transformers_logits(imported, tmp_path):
    """copy_zero (LLaMA Pro's copies with o_proj and down_proj zero) on the imported qwen2: the
    grown run's logits are the original model's as transformers computed them; exported, its new
    layers are there with their zero projections."""
    grown = tmp_path / "grown"
    invoke_ok("grow", "--from", imported["qwen2"], "--strategy", "copy_zero", "--out", grown,
              "--set", "model.n_layers=4")
    run = run_dir.load_run(grown)
    ref = reference("qwen2")
    got = logits(run.params, ref["input_ids"], run.config.model)
    np.testing.assert_allclose(got, np.load(FIXTURES / "qwen2" / "logits.npy"), rtol=0, atol=1e-4)
    assert run_dir.load_tokenizer(grown).eos_id == 0  # the model's tokenizer went along
    out = tmp_path / "export"
    invoke_ok("export", grown, "--out", out)
    tensors = hf_tensors(out)
    assert json.loads((out / store.CONFIG_FILE).read_text())["num_hidden_layers"] == 4
    zero = [k for k in tensors if k.endswith(("o_proj.weight", "down_proj.weight")) and not tensors[k].any()]
    assert len(zero) == 4  # two copied layers, two projections each


def test_an_imported_run_trains_further_with_train_resume(corpus, tmp_path):
    """Continued pretraining: `laggrow train RUN/config.json --out RUN --resume` trains an imported
    model from its own weights (the first step's loss is theirs on batch 0 of the stream) and a
    fresh optimizer state, for the train.steps set at import; it is then a finished run."""
    from laggrow import train

    run = tmp_path / "run"
    invoke_ok("import", FIXTURES / "llama" / "model", "--out", run,
              *sets([f"data.corpus={corpus}", *DATA, "train.log_every=1"]))
    imported = run_dir.load_run(run)
    cfg = imported.config
    batch = run_dir.load_source_dataset(run).train_batch(0, cfg.train.batch_size, cfg.train.seed)
    before = train.evaluate(imported.params, cfg.model, batch[None])
    invoke_ok("train", run / store.CONFIG_FILE, "--out", run, "--resume")
    records = store.read_jsonl(run / store.METRICS_FILE, "records")
    assert [r["step"] for r in records if "train_loss" in r][:2] == [1, 2]
    assert records[0]["train_loss"] == pytest.approx(before, abs=1e-5)
    summary = json.loads((run / store.SUMMARY_FILE).read_text())
    assert summary["complete"] is True and summary["steps"] == cfg.train.steps == 4
    assert not run_dir.is_fresh(run) and int(run_dir.load_run(run).state["step"]) == 4


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------------


def edited(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of fixture `name`'s model directory with its config.json's keys changed (None: removed)."""
    directory = tmp_path / f"{name}-edited"
    shutil.copytree(FIXTURES / name / "model", directory)
    config = json.loads((directory / store.CONFIG_FILE).read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / store.CONFIG_FILE).write_text(json.dumps(config))
    return directory


def refused(tmp_path: Path, args: list, expected: str) -> str:
    from typer.testing import CliRunner

    from laggrow.cli import app

    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, [str(a) for a in args])
    line = one_line_failure(result, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no staging left
    return line


@pytest.mark.parametrize("name, changes, expected", [
    ("llama", {"model_type": "gpt_neox"}, "model_type 'gpt_neox' is not supported"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "factor": 32.0, "rope_theta": 500000.0}},
     "rope_parameters.rope_type 'llama3' cannot be represented"),
    ("llama", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type 'linear'"),
    ("llama", {"head_dim": 16}, "head_dim 16 cannot be represented by laggrow (expected hidden_size / "),
    ("llama", {"hidden_act": "gelu"}, "hidden_act 'gelu' cannot be represented"),
    ("llama", {"attention_bias": True}, "attention_bias True cannot be represented"),
    ("llama", {"mlp_bias": True}, "mlp_bias True cannot be represented"),
    ("llama", {"num_local_experts": 8}, "num_local_experts 8 cannot be represented"),
    ("llama", {"quantization_config": {"quant_method": "bitsandbytes"}}, "quantization_config"),
    ("llama", {"tie_word_embeddings": True}, "tie_word_embeddings true, but model.safetensors holds an lm_head"),
    ("llama", {"intermediate_size": 48}, "model.layers.0.mlp.gate_proj.weight has shape [64, 32], config.json "
                                         "says [48, 32]"),
    ("llama", {"num_hidden_layers": 3}, "no tensor model.layers.2.input_layernorm.weight"),
    ("llama", {"num_hidden_layers": 1}, "holds model.layers.1."),
    ("llama", {"hidden_size": None}, "config.json: missing hidden_size"),
    ("mistral", {"sliding_window": 16}, "sliding_window 16 cannot be represented"),
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window True cannot be represented"),
    ("qwen2", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types 'sliding_attention'"),
])
def test_a_config_laggrow_cannot_represent_is_refused_naming_its_key(tmp_path, name, changes, expected):
    source = edited(tmp_path, name, **changes)
    refused(tmp_path, ["import", source, "--out", tmp_path / "run"], expected)


def test_damaged_or_missing_files_are_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    llama = edited(tmp_path, "llama")
    weights = llama / store.HF_WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    refused(tmp_path, ["import", llama, "--out", out], "model.safetensors: not a readable safetensors file")
    weights.unlink()
    refused(tmp_path, ["import", llama, "--out", out], "no model.safetensors and no model.safetensors.index.json")
    mistral = edited(tmp_path, "mistral")
    (mistral / store.hf_shard_name(3, 4)).unlink()
    refused(tmp_path, ["import", mistral, "--out", out], "names the shard model-00003-of-00004.safetensors, which "
                                                         "is not in")
    qwen = edited(tmp_path, "qwen2")
    (qwen / store.TOKENIZER_FILE).unlink()
    refused(tmp_path, ["import", qwen, "--out", out], "tokenizer.json: not found (expected the model's tokenizer")
    refused(tmp_path, ["import", tmp_path / "nothing", "--out", out], "does not exist (expected a Hugging Face model")


@pytest.mark.parametrize("args, expected", [
    (["--dtype", "float16"], "--dtype: expected one of keep, float32, bfloat16, got 'float16'"),
    (["--set", "model.n_layers=4"], "--set model.n_layers: an imported model is what"),
    (["--set", "data.tokenizer=byte"], "--set data.tokenizer='byte': an imported model reads its own tokenizer"),
    (["--set", "data.seq_len=100"], "data.seq_len: expected at most the model's max_position_embeddings (64"),
    (["--set", "train.lr=-1"], "train.lr: expected a number > 0"),
])
def test_bad_import_options_are_refused_in_one_line(tmp_path, args, expected):
    refused(tmp_path, ["import", FIXTURES / "llama" / "model", "--out", tmp_path / "run", *args], expected)


def test_export_refuses_what_it_cannot_write(imported, tiny_base_run, tmp_path):
    run = imported["llama"]
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    refused(tmp_path, ["export", run, "--out", target], "exists and is not a laggrow export")
    assert (target / "notes.txt").read_text() == "keep me"
    out = tmp_path / "hf"
    refused(tmp_path, ["export", tiny_base_run, "--out", out], "model.arch is 'gpt' (expected 'llama'")
    refused(tmp_path, ["export", run, "--out", out, "--candidate", "0"], "--candidate: ")
    refused(tmp_path, ["export", run, "--out", out, "--shard-size", "5XB"], "--shard-size: expected a size")
    refused(tmp_path, ["export", run, "--out", out, "--dtype", "int8"], "--dtype: expected one of float32")
    refused(tmp_path, ["export", run, "--out", run / "inside"], "inside the laggrow run")


def test_an_earlier_export_is_replaced_and_a_killed_one_leaves_nothing_in_the_way(imported, corpus, tmp_path):
    run, out = imported["llama"], tmp_path / "hf"
    invoke_ok("export", run, "--out", out, "--shard-size", "50KB")
    assert (out / store.HF_WEIGHTS_INDEX).is_file()
    invoke_ok("export", run, "--out", out)  # an earlier laggrow export: replaced whole
    assert not list(out.glob("model-*")) and (out / store.HF_WEIGHTS_FILE).is_file()
    # killed while writing: the previous export stays as it was, and the next attempt goes through
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = start_laggrow("export", run, "--out", out, "--dtype", "bfloat16", fault=f"staged:{out.name}=SIGKILL")
    finish(proc)
    assert proc.returncode == -9 and {p.name: p.read_bytes() for p in out.iterdir()} == before
    invoke_ok("export", run, "--out", out, "--dtype", "bfloat16")
    assert json.loads((out / store.CONFIG_FILE).read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    # and an import killed the same way leaves nothing a rerun trips over
    again = tmp_path / "again"
    small = sets([f"data.corpus={corpus}", "data.seq_len=32"])  # the Bible whole took most of the test's time
    proc = start_laggrow("import", FIXTURES / "llama" / "model", "--out", again, *small,
                         fault=f"staged:{again.name}=SIGKILL")
    finish(proc)
    assert proc.returncode == -9 and not again.exists()
    invoke_ok("import", FIXTURES / "llama" / "model", "--out", again, *small)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "hf"]


# ---- with transformers itself (the hf extra) ---------------------------------------------------------


@needs_torch
def test_the_fixtures_are_what_transformers_makes_now(tmp_path):
    """make_fixtures.py run again: the same weights bit for bit, the same logits within 1e-5 and
    the same greedy tokens as the committed files (what the suite without torch relies on)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    for name in NAMES:
        fresh = maker.make(name, tmp_path)
        old, new = reference(name), json.loads((fresh / "reference.json").read_text())
        assert new["weights_sha256"] == old["weights_sha256"], name
        assert new["input_ids"] == old["input_ids"] and new["generate"] == old["generate"], name
        np.testing.assert_allclose(np.load(fresh / "logits.npy"), np.load(FIXTURES / name / "logits.npy"),
                                   rtol=0, atol=1e-5, err_msg=name)


def load_in_transformers(directory: Path):
    """AutoModelForCausalLM.from_pretrained(directory) in float32, checked to load every weight:
    no missing, unexpected or mismatched ones, no warning logged while loading."""
    import logging
    import warnings

    import torch
    import transformers

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logger = transformers.utils.logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(
                directory, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    assert all(not v for v in info.values()), info
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert [str(w.message) for w in caught] == []
    return hf_model.eval()


def transformers_logits(hf_model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(torch.tensor(np.asarray(ids, np.int64))).logits.float().numpy()


@needs_torch
@pytest.mark.parametrize("name", NAMES)
def test_exports_load_in_transformers_with_every_weight_and_the_same_logits(imported, tmp_path, name):
    import transformers

    out = tmp_path / "export"
    invoke_ok("export", imported[name], "--out", out)
    hf_model = load_in_transformers(out)
    ref = reference(name)
    np.testing.assert_allclose(transformers_logits(hf_model, ref["input_ids"]), np.load(FIXTURES / name / "logits.npy"),
                               rtol=0, atol=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "And God said, Let there be light: and there was light."
    assert tok.encode(text, add_special_tokens=False) == run_dir.load_tokenizer(imported[name]).encode(text).tolist()


@needs_torch
def test_a_grown_export_computes_the_original_model_in_transformers(imported, tmp_path):
    grown, out = tmp_path / "grown", tmp_path / "export"
    invoke_ok("grow", "--from", imported["llama"], "--strategy", "copy_zero", "--out", grown,
              "--set", "model.n_layers=3")
    invoke_ok("export", grown, "--out", out)
    hf_model = load_in_transformers(out)
    assert hf_model.config.num_hidden_layers == 3
    np.testing.assert_allclose(transformers_logits(hf_model, reference("llama")["input_ids"]),
                               np.load(FIXTURES / "llama" / "logits.npy"), rtol=0, atol=1e-4)
