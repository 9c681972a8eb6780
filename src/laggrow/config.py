"""A run's configuration: the frozen dataclasses of its sections, each value checked (read from
YAML with `--set` overrides through `laggrow.config_engine`).

A run is described by three sections, `model`, `data` and `train`. Every key is checked: an
unknown key, a value of the wrong type or out of range raises `LaggrowError` naming the key
(`model.d_model`) and what was expected, in one line. Numbers must be finite (a NaN passes every
`<` test), integers fit an int32 (the device's step counter and sizes; seeds a uint32, what jax
and numpy take), and a run must fit in memory (`resources.check_training_fits`, pure arithmetic).
No jax here, so `laggrow --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laggrow import formats
from laggrow.config_engine import apply_overrides, build_dataclass, check_known_keys, read_yaml, require, shown
from laggrow.errors import LaggrowError
from laggrow.resources import INT32_MAX, MAX_VOCAB, SEED_MAX, check_training_fits

ARCHS = ("gpt", "llama")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a decoder-only pre-norm Transformer LM, of one of two architectures (`arch`):

    - `gpt` (the default): LayerNorm, a GELU MLP, multi-head attention with q/k/v fused, learned
      or rotary positions; no linear biases.
    - `llama`: RMSNorm (epsilon `ln_eps`), a SwiGLU MLP (gate, up, down), grouped-query attention
      (`n_kv_heads` key/value heads shared by groups of query heads), rotary positions of base
      `rope_theta` in Hugging Face's rotate-half convention, no linear biases but optional ones on
      q/k/v (`qkv_bias`, as Qwen2). The layout maps one-to-one onto Hugging Face's Llama tensors
      (model.py's docstring)."""

    n_layers: int = 2  # Transformer blocks (the depth growth changes)
    d_model: int = 64  # the residual stream's width
    n_heads: int = 4  # query heads; d_model must be a multiple of it
    d_ff: int = 256  # the MLP's hidden width (gpt: GELU; llama: SwiGLU's gate and up)
    vocab_size: int = 256  # set from the tokenizer by laggrow train (256 for bytes)
    max_seq_len: int = 128  # the longest context; learned positions have this many rows
    pos_emb: str = "learned"  # learned | rope
    tie_embeddings: bool = False  # the output head is the token embedding's transpose
    dtype: str = "float32"  # compute dtype; params stay float32
    ln_eps: float = 1e-5  # the LayerNorm / RMSNorm epsilon
    # How the model is computed, not what it computes: none of these changes a parameter or the
    # model's math (beyond float rounding), and a run saved before they existed reads back with
    # their defaults. What `auto` means is decided per backend at trace time (attention.py,
    # model.choose_scan); docs/design.md has the measurements behind the defaults.
    attention: str = "auto"  # auto | xla | cudnn (cuDNN fused flash attention, GPU, bf16/fp16)
    scan_layers: object = "auto"  # auto | true | false: lax.scan over the layer axis, or unrolled
    loss_chunk: int = 0  # tokens per chunk of the cross-entropy's logits; 0: all logits at once
    # The architecture and its options (added after runs were first saved: see ARCH_KEYS).
    arch: str = "gpt"  # gpt | llama
    n_kv_heads: int = 0  # key/value heads (llama); 0: one per query head. Stored as 0 when = n_heads
    rope_theta: float = 10000.0  # the base of RoPE's frequencies (pos_emb rope)
    qkv_bias: bool = False  # biases on the q, k and v projections (llama; Qwen2 has them)

    def __post_init__(self) -> None:
        # One spelling per model: n_kv_heads equal to n_heads is plain multi-head attention, the
        # default, so a config that says so and one that does not are one config (one fingerprint).
        if self.n_kv_heads == self.n_heads and self.n_kv_heads != 0:
            object.__setattr__(self, "n_kv_heads", 0)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: `n_kv_heads`, or `n_heads` when it is 0 (always so for gpt)."""
        return self.n_kv_heads or self.n_heads

    def validate(self) -> None:
        _require_finite(self, "model")
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "max_seq_len"):
            _require_int(self, "model", name, 1)
        require(self.d_model % self.n_heads == 0, "model.d_model",
                 f"a multiple of model.n_heads ({self.n_heads})", self.d_model)
        require(self.pos_emb in ("learned", "rope"), "model.pos_emb", "'learned' or 'rope'", self.pos_emb)
        self._validate_arch()
        if self.pos_emb == "rope":
            require(self.head_dim % 2 == 0, "model.d_model",
                     "d_model / n_heads even (RoPE rotates pairs)", self.d_model)
        require(self.dtype in ("float32", "bfloat16"), "model.dtype", "'float32' or 'bfloat16'", self.dtype)
        require(self.ln_eps > 0, "model.ln_eps", "a number > 0", self.ln_eps)
        require(self.attention in ("auto", "xla", "cudnn"), "model.attention", "'auto', 'xla' or 'cudnn'",
                self.attention)
        if self.attention == "cudnn":  # what no machine runs; the backend itself is checked at trace time
            require(self.dtype in ("bfloat16", "float16"), "model.attention",
                    f"'auto' or 'xla' with model.dtype={self.dtype} (cuDNN attention needs bfloat16)",
                    self.attention)
            require(self.head_dim % 8 == 0 and self.head_dim <= 256, "model.attention",
                    f"'auto' or 'xla' with head dim {self.head_dim} (cuDNN takes a multiple of 8, at most 256)",
                    self.attention)
        # `1 == True` in Python: check the type, not membership, so an integer 1 is refused
        require(self.scan_layers == "auto" or isinstance(self.scan_layers, bool), "model.scan_layers",
                "'auto', true or false", self.scan_layers)
        require(isinstance(self.loss_chunk, int) and not isinstance(self.loss_chunk, bool), "model.loss_chunk",
                "an integer (0: whole logits)", self.loss_chunk)
        _require_int(self, "model", "loss_chunk", 0)

    def _validate_arch(self) -> None:
        """The architecture's keys, each in one line; what one architecture lacks is refused for it."""
        require(self.arch in ARCHS, "model.arch", "'gpt' or 'llama'", self.arch)
        require(isinstance(self.qkv_bias, bool), "model.qkv_bias", "true or false", self.qkv_bias)
        require(self.rope_theta > 0, "model.rope_theta", "a number > 0", self.rope_theta)
        if self.pos_emb != "rope":
            require(self.rope_theta == ModelConfig.rope_theta, "model.rope_theta",
                    "10000 (unused: model.pos_emb is 'learned', so there is no RoPE)", self.rope_theta)
        if self.arch == "gpt":
            require(self.n_kv_heads == 0, "model.n_kv_heads",
                    f"0 or {self.n_heads} (model.arch 'gpt' fuses q/k/v: grouped-query attention is "
                    "model.arch 'llama')", self.n_kv_heads)
            require(not self.qkv_bias, "model.qkv_bias",
                    "false (model.arch 'gpt' has no linear biases; q/k/v biases are model.arch 'llama')",
                    self.qkv_bias)
            return
        require(self.pos_emb == "rope", "model.pos_emb",
                "'rope' with model.arch 'llama' (learned positions are model.arch 'gpt')", self.pos_emb)
        _require_int(self, "model", "n_kv_heads", 0)
        require(self.n_kv_heads <= self.n_heads and self.n_heads % self.kv_heads == 0, "model.n_kv_heads",
                f"a divisor of model.n_heads ({self.n_heads}), or 0 for one per query head", self.n_kv_heads)

    # how the model is computed, never what (the keys importers and stacking let a user set)
    COMPUTE_KEYS = ("attention", "scan_layers", "loss_chunk")
    ARCH_KEYS = ("arch", "n_kv_heads", "rope_theta", "qkv_bias")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, the keys added after runs were first saved (`formats.ADDED_KEYS`)
        only where not at their defaults: a run's identity and its checkpoints' fingerprint."""
        return formats.without_added_defaults("model", dataclasses.asdict(self), ModelConfig)

    @classmethod
    def from_params(cls, params: dict, **defaults: Any) -> ModelConfig:
        """Infer the architecture from a params tree (see model.py for the layouts). What the
        shapes cannot tell (dtype, ln_eps, rope_theta, max_seq_len under RoPE) comes from `defaults`."""
        try:
            vocab, d_model = params["embed"]["tokens"].shape
            attn, mlp = params["blocks"]["attn"], params["blocks"]["mlp"]
            fields = dict(defaults)
            if "w_q" in attn:  # llama
                n_layers, _, n_heads, _ = attn["w_q"].shape
                fields.update(arch="llama", n_kv_heads=int(attn["w_k"].shape[2]), qkv_bias="b_q" in attn,
                              d_ff=int(mlp["w_gate"].shape[-1]))
            else:
                n_layers, _, _, n_heads, _ = attn["w_qkv"].shape
                fields["d_ff"] = int(mlp["w_in"].shape[-1])
        except (KeyError, TypeError, ValueError) as err:
            raise LaggrowError(f"params: not a laggrow model tree ({err!r} missing or misshapen)") from None
        fields.update(n_layers=int(n_layers), d_model=int(d_model), n_heads=int(n_heads),
                      vocab_size=int(vocab), tie_embeddings="head" not in params)
        if "pos" in params:
            fields.update(pos_emb="learned", max_seq_len=int(params["pos"]["embedding"].shape[0]))
        else:
            fields["pos_emb"] = "rope"
        return cls(**fields)

    def _attention_width(self) -> int:
        """Output units of the q, k, v and o projections together: 4 D for multi-head attention,
        less under grouped-query attention (k and v have kv_heads * head_dim outputs each)."""
        return 2 * self.d_model + 2 * self.kv_heads * self.head_dim

    def n_params(self) -> int:
        """Parameter count, matching `model.param_shapes` (checked in tests)."""
        d, f, v, L = self.d_model, self.d_ff, self.vocab_size, self.n_layers
        if self.arch == "llama":  # two RMSNorm scales, q k v o, gate up down, q/k/v biases
            bias = self.d_model + 2 * self.kv_heads * self.head_dim if self.qkv_bias else 0
            per_layer = 2 * d + self._attention_width() * d + 3 * d * f + bias
            total = v * d + L * per_layer + d
        else:
            per_layer = 4 * d + 4 * d * d + 2 * d * f  # two LNs, qkv + out, MLP in + out
            total = v * d + L * per_layer + 2 * d
        if self.pos_emb == "learned":
            total += self.max_seq_len * d
        if not self.tie_embeddings:
            total += d * v
        return total

    def train_flops_per_token(self, seq_len: int) -> int:
        """Model FLOPs of one training token (forward + backward = 3x forward), as in PaLM's MFU:
        6 per matmul weight plus the attention score and value products."""
        d, f, v, L = self.d_model, self.d_ff, self.vocab_size, self.n_layers
        mlp = 3 * d * f if self.arch == "llama" else 2 * d * f
        matmul_weights = L * (self._attention_width() * d + mlp) + d * v
        attention = L * 2 * seq_len * d  # QK^T and AV, 2 FLOPs each, per token (causal not halved)
        return 6 * matmul_weights + 6 * attention

    def train_step_compute(self, batch_size: int, seq_len: int) -> tuple[int, int]:
        """(tokens, FLOPs) of one training step of `batch_size` windows of `seq_len` tokens: what
        every record of compute (a run's summary, a pool's curves, halving's charges, stacking's
        budget) counts a step as."""
        tokens = batch_size * seq_len
        return tokens, self.train_flops_per_token(seq_len) * tokens


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from and how they are cut into batches."""

    # kjv | shakespeare | path to a .txt, .jsonl, .jsonl.gz or .parquet file, a folder of .txt files, or a
    # token directory made by laggrow tokenize (memory-mapped)
    corpus: str = "kjv"
    text_field: str = "text"  # the field read from a .jsonl corpus
    tokenizer: str = "byte"  # byte | bpe | hf (an imported model's own, kept in its run: laggrow import)
    bpe_vocab_size: int = 1024  # the vocabulary a `bpe` tokenizer is trained to (on the train split)
    seq_len: int = 128  # tokens per training window (each window reads seq_len + 1 tokens)
    heldout_fraction: float = 0.02  # the share of documents held out (whole documents), in [0.01, 0.5)
    # an evaluation reads eval_batches x eval_batch_size held-out windows (in a pool: of the selection set)
    eval_batches: int = 4
    eval_batch_size: int = 16  # windows per held-out batch
    split_seed: int = 0  # which documents are held out, and which of those select and which test

    def validate(self) -> None:
        _require_finite(self, "data")
        require(bool(self.corpus), "data.corpus", "'kjv', 'shakespeare' or a path", self.corpus)
        require(self.tokenizer in ("byte", "bpe", "hf"), "data.tokenizer", "'byte', 'bpe' or 'hf'", self.tokenizer)
        _require_int(self, "data", "bpe_vocab_size", 260, MAX_VOCAB)
        _require_int(self, "data", "seq_len", 2)
        require(0.01 <= self.heldout_fraction < 0.5, "data.heldout_fraction",
                 "a fraction in [0.01, 0.5)", self.heldout_fraction)
        _require_int(self, "data", "eval_batches", 1)
        _require_int(self, "data", "eval_batch_size", 1)
        _require_int(self, "data", "split_seed", 0, SEED_MAX)


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and loop settings."""

    steps: int = 100  # optimizer steps; the schedule is defined over them
    batch_size: int = 16  # windows per step (data.seq_len tokens each)
    lr: float = 3e-3  # the peak learning rate (AdamW)
    schedule: str = "cosine"  # cosine | linear | constant (all after a linear warmup)
    warmup_steps: int = 10  # linear warmup to the peak, in [0, steps]
    # the learning rate the warmup starts from; 0: lr / warmup_steps at the first step (a grown
    # model may re-warm from the rate its source ended at: a pool's `warmup_start: source_end`)
    warmup_start: float = 0.0
    # steps held at the peak after the warmup, before the decay starts (pools: probe_lr "peak")
    hold_steps: int = 0
    min_lr_ratio: float = 0.1  # where the decay ends, as a share of the peak
    weight_decay: float = 0.1  # AdamW's decoupled decay, on matmul weights only (not norms or biases)
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    grad_clip: float = 1.0  # the global gradient norm clipped to; 0: no clipping
    dropout: float = 0.0  # residual dropout while training; its mask key is fold_in(key(seed), step)
    seed: int = 0  # the init and the data order
    eval_every: int = 50  # steps between held-out evaluations (and the last step)
    log_every: int = 10  # steps between training-loss records in metrics.jsonl
    checkpoint_every: int = 0  # 0: only at the end

    def to_dict(self) -> dict[str, Any]:
        """The fields, the keys added after runs were first saved (`formats.ADDED_KEYS`) only where
        not at their defaults."""
        return formats.without_added_defaults("train", dataclasses.asdict(self), TrainConfig)

    def validate(self) -> None:
        _require_finite(self, "train")
        _require_int(self, "train", "steps", 1)
        _require_int(self, "train", "batch_size", 1)
        require(self.lr > 0, "train.lr", "a number > 0", self.lr)
        require(self.schedule in ("cosine", "linear", "constant"), "train.schedule",
                 "'cosine', 'linear' or 'constant'", self.schedule)
        require(0 <= self.warmup_steps <= self.steps, "train.warmup_steps",
                 f"an integer in [0, train.steps={self.steps}]", self.warmup_steps)
        require(0 <= self.warmup_start <= self.lr, "train.warmup_start",
                f"a learning rate in [0, train.lr={self.lr:g}]", self.warmup_start)
        require(isinstance(self.hold_steps, int) and 0 <= self.hold_steps <= self.steps - self.warmup_steps,
                "train.hold_steps", f"an integer in [0, train.steps - warmup_steps = {self.steps - self.warmup_steps}]",
                self.hold_steps)
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio)
        require(self.weight_decay >= 0, "train.weight_decay", "a number >= 0", self.weight_decay)
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2",
                 "numbers in [0, 1)", (self.beta1, self.beta2))
        require(0 <= self.dropout < 1, "train.dropout", "a rate in [0, 1)", self.dropout)
        require(self.grad_clip >= 0, "train.grad_clip", "a number >= 0 (0 disables)", self.grad_clip)
        for name in ("eval_every", "log_every"):
            _require_int(self, "train", name, 1)
        _require_int(self, "train", "checkpoint_every", 0)
        _require_int(self, "train", "seed", 0, SEED_MAX)


# `auto` where a key's value is chosen from the machine (mesh axes, a pool's chunk_size)
AUTO = "auto"


@dataclass(frozen=True)
class MeshConfig:
    """How a run or a pool is laid out over devices (laggrow.mesh): devices on the candidate axis
    (pools only), devices on the data axis, and whether parameters and optimizer state are split
    over the data axis (FSDP). Where it runs, not what it computes: never part of a run's or a
    pool's identity, so a run checkpointed on one layout resumes on another."""

    candidates: int | str = AUTO  # devices on the candidate axis (pools only): an integer or auto
    data: int | str = AUTO  # devices on the data axis (the batch split): an integer or auto
    fsdp: bool = False  # parameters and optimizer state split over the data axis too

    def validate(self, where: str = "mesh") -> MeshConfig:
        for name in ("candidates", "data"):
            value = getattr(self, name)
            ok = value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1 << 16)
            require(ok, f"{where}.{name}", f"an integer >= 1 or '{AUTO}'", value)
        require(isinstance(self.fsdp, bool), f"{where}.fsdp", "true or false", self.fsdp)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mesh_config_from_dict(raw: Any, where: str = "mesh") -> MeshConfig:
    """A `mesh` section: candidates, data (an integer or auto) and fsdp, each checked."""
    if raw is None:
        return MeshConfig()
    if not isinstance(raw, dict):
        raise LaggrowError(f"{where}: expected a mapping (candidates, data, fsdp), got {shown(raw)}")
    # not build_dataclass: its coerce takes the first type of `int | str` and would refuse "auto"
    check_known_keys(MeshConfig, raw, where)
    return MeshConfig(**raw).validate(where)


def with_mesh_overrides(base: MeshConfig, overrides: list[str] | None) -> MeshConfig:
    """`base` with `--set mesh.KEY=VALUE` overrides (probe, train-final: a pool's other keys are
    what the pool is, and are changed in its file)."""
    if not overrides:
        return base
    raw = apply_overrides({"mesh": base.to_dict()}, overrides)
    if set(raw) != {"mesh"}:
        other = sorted(set(raw) - {"mesh"})[0]
        raise LaggrowError(f"--set {other}.…: only mesh.KEY=VALUE here (expected mesh.candidates, mesh.data "
                           "or mesh.fsdp; the pool's other keys are changed in its file)")
    return mesh_config_from_dict(raw["mesh"], "mesh")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # where it runs, not what: left out of to_dict (the run's identity, its checkpoints' fingerprint)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def validate(self, where: str = "config", check_fits: bool = True) -> RunConfig:
        """Check every value, then (unless `check_fits` is off, for a run only read back) that
        training it fits in this machine's memory: a pure estimate, before anything is allocated."""
        self.model.validate()
        self.data.validate()
        self.train.validate()
        require(self.model.max_seq_len >= self.data.seq_len, "model.max_seq_len",
                 f"at least data.seq_len ({self.data.seq_len})", self.model.max_seq_len)
        if check_fits:
            check_training_fits(self, where)
        return self

    def to_dict(self) -> dict[str, Any]:
        """What the run is (written to config.json with `formats.with_version`, compared on resume,
        its checkpoints' fingerprint): every section but `mesh`, no `format_version`."""
        return {"model": self.model.to_dict(), "data": dataclasses.asdict(self.data),
                "train": self.train.to_dict()}


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def _require_int(obj: Any, section: str, name: str, low: int, high: int = INT32_MAX) -> None:
    """An integer field in [low, high]; the default bound is int32, what step counters and
    array sizes become on the device."""
    value = getattr(obj, name)
    require(value >= low, f"{section}.{name}", f"an integer >= {low}", value)
    top = {INT32_MAX: "2**31 - 1, an int32", SEED_MAX: "2**32 - 1, a uint32 seed"}.get(high, str(high))
    require(value <= high, f"{section}.{name}", f"an integer <= {top}", value)


def _require_finite(obj: Any, section: str) -> None:
    """No float field is inf or NaN, however the config was made (a NaN passes every `<` test)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise LaggrowError(f"{section}.{f.name}: expected a finite number, got {shown(value)}")


def run_config_from_dict(raw: dict[str, Any], where: str = "config", check_fits: bool = True) -> RunConfig:
    """Build and validate a RunConfig; `data.seq_len` fills `model.max_seq_len` when absent.
    `check_fits=False` skips the memory estimate, for a run that is only read back."""
    if not isinstance(raw, dict):
        raise LaggrowError(f"{where}: expected a mapping of sections (model, data, train), got {shown(raw)}")
    raw = formats.migrate(raw, where, "run config", formats.RUN)  # a config.json of any laggrow, as one of today
    for key in raw:
        if key not in SECTIONS and key != "mesh":
            raise LaggrowError(f"{where}: unknown section {shown(key)} (expected model, data, train, mesh)")
    sections = {}
    for name in SECTIONS:
        section = raw.get(name)
        if section is None:  # absent, or an empty `model:`
            section = {}
        if not isinstance(section, dict):
            raise LaggrowError(f"{where}: section '{name}' must be a mapping of keys to values, "
                               f"got {shown(section)}")
        sections[name] = section
    data = build_dataclass(DataConfig, sections["data"], "data")
    model_raw = dict(sections["model"])
    model_raw.setdefault("max_seq_len", data.seq_len)
    if model_raw.get("arch") == "llama":  # llama's positions are rotary; `learned` written out is refused
        model_raw.setdefault("pos_emb", "rope")
    model = build_dataclass(ModelConfig, model_raw, "model")
    train = build_dataclass(TrainConfig, sections["train"], "train")
    mesh = mesh_config_from_dict(raw.get("mesh"), "mesh")
    return RunConfig(model=model, data=data, train=train, mesh=mesh).validate(where, check_fits)


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw = read_yaml(path) if path is not None else {}
    return run_config_from_dict(apply_overrides(raw, overrides), where=str(path or "config"))
