"""laggrow's train step against a PyTorch trainer of the same model, in one process.

    .venv/bin/python benchmarks/peer_torch.py [CONFIG] [--rounds 6] [--steps 5] [--set section.key=value ...]

The peer is built from the laggrow run config (`laggrow.config.load_run_config`) and its
`model.arch`. For `gpt`, a nanoGPT-style model: the same
pre-LayerNorm decoder (learned positions or RoPE rotating the two halves of each head, as
`laggrow.model.rope`; GELU's tanh approximation, `jax.nn.gelu`'s default; no biases in the dense
layers; tied or untied embeddings), the same initialisation scales, the same parameter count
(checked), `scaled_dot_product_attention(is_causal=True)`, bfloat16 autocast when model.dtype is
bfloat16, and AdamW with the config's learning-rate schedule, betas, weight decay (on weights,
not LayerNorms) and gradient clipping. For `llama`, Hugging Face's `LlamaForCausalLM` written out
(its module and parameter names): RMSNorm in float32 cast back before the scale, SwiGLU
(down(silu(gate(x)) * up(x))), grouped-query attention with `n_kv_heads` key/value heads (SDPA's
`enable_gqa`, what transformers' sdpa attention does on torch >= 2.5, or `--gqa repeat` for
`repeat_kv`'s copy), rotate-half RoPE of base `rope_theta`, q/k/v biases when `qkv_bias`, tied or
untied embeddings, laggrow's initialisation (o_proj and down_proj at 0.02 / sqrt(2 L)) and decay
mask (norm scales and biases spared). Both peers train to laggrow's losses step for step from
laggrow's initial parameters (`load_laggrow_params`, tests/test_benchmarks.py). On CUDA the peer is
`torch.compile`d and uses fused AdamW; on CPU it runs eager (what a researcher's nanoGPT does
there), with torch.set_num_threads(cpu_count).

laggrow's jitted step (`laggrow.train.jit_train_step`) and the peer's step train batches of the
same shape (batch, seq_len, vocab) and are timed in alternating rounds, their order swapped every
round, so a ratio never mixes two speeds of a shared machine. Printed: ms/step and tokens/s of
each (median of rounds) and laggrow's tokens/s over the peer's per round (median and range).
PyTorch is optional: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the script says how to install it; tests skip
    torch = None

INSTALL = "benchmarks/peer_torch.py needs PyTorch: pip install -e '.[bench]' (or pip install 'torch>=2.1')"


def rope(x):
    """RoPE on (B, H, T, Dh), rotating the two halves of each head: laggrow.model.rope's arithmetic."""
    t, dh = x.shape[-2], x.shape[-1]
    half = dh // 2
    freqs = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32, device=x.device) / half))
    angles = torch.arange(t, dtype=torch.float32, device=x.device)[:, None] * freqs[None, :]  # (T, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def build_peer(m, device: str = "cpu", gqa: str = "sdpa"):
    """The peer model of laggrow ModelConfig `m` (its `arch`): a torch.nn.Module mapping tokens
    (B, T) to float32 logits (B, T, V). `gqa` (llama): how grouped-query attention reads its
    key/value heads, `sdpa` (`enable_gqa=True`) or `repeat` (`repeat_kv`)."""
    if m.arch == "llama":
        return build_llama_peer(m, device, gqa)
    return build_gpt_peer(m, device)


def build_gpt_peer(m, device: str = "cpu"):
    """The nanoGPT-style peer of a gpt ModelConfig `m`. Initialised as laggrow initialises:
    N(0, 0.02), output projections N(0, 0.02 / sqrt(2 L)), LayerNorms ones and zeros."""
    nn = torch.nn
    std, out_std = 0.02, 0.02 / math.sqrt(2 * m.n_layers)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(m.d_model, eps=m.ln_eps)
            self.w_qkv = nn.Linear(m.d_model, 3 * m.d_model, bias=False)
            self.w_out = nn.Linear(m.d_model, m.d_model, bias=False)
            self.ln2 = nn.LayerNorm(m.d_model, eps=m.ln_eps)
            self.w_in = nn.Linear(m.d_model, m.d_ff, bias=False)
            self.w_down = nn.Linear(m.d_ff, m.d_model, bias=False)
            nn.init.normal_(self.w_qkv.weight, std=std)
            nn.init.normal_(self.w_in.weight, std=std)
            nn.init.normal_(self.w_out.weight, std=out_std)
            nn.init.normal_(self.w_down.weight, std=out_std)

        def forward(self, x, dropout: float):
            b, t, d = x.shape
            qkv = self.w_qkv(self.ln1(x)).view(b, t, 3, m.n_heads, m.head_dim)
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, Dh)
            if m.pos_emb == "rope":
                q, k = rope(q), rope(k)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + F.dropout(self.w_out(att.transpose(1, 2).reshape(b, t, d)), dropout, self.training)
            y = F.gelu(self.w_in(self.ln2(x)), approximate="tanh")
            return x + F.dropout(self.w_down(y), dropout, self.training)

    class PeerLM(nn.Module):
        def __init__(self, dropout: float = 0.0):
            super().__init__()
            self.dropout = dropout
            self.embed = nn.Embedding(m.vocab_size, m.d_model)
            nn.init.normal_(self.embed.weight, std=std)
            if m.pos_emb == "learned":
                self.pos = nn.Embedding(m.max_seq_len, m.d_model)
                nn.init.normal_(self.pos.weight, std=std)
            self.blocks = nn.ModuleList(Block() for _ in range(m.n_layers))
            self.ln_f = nn.LayerNorm(m.d_model, eps=m.ln_eps)
            if not m.tie_embeddings:
                self.head = nn.Linear(m.d_model, m.vocab_size, bias=False)
                nn.init.normal_(self.head.weight, std=std)

        def forward(self, tokens):
            x = self.embed(tokens)
            if m.pos_emb == "learned":
                x = x + self.pos.weight[: tokens.shape[1]][None]
            for block in self.blocks:
                x = block(x, self.dropout)
            x = self.ln_f(x)
            head = self.embed.weight if m.tie_embeddings else self.head.weight
            return F.linear(x, head).float()

    return PeerLM().to(device)


def rotate_half(x):
    """Hugging Face's rotate_half: (x1, x2) -> (-x2, x1) on the two halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope_cos_sin(t: int, dh: int, theta: float, device, dtype):
    """cos and sin (T, Dh) of rotate-half RoPE: inv_freq = theta^(-2e/Dh), each frequency twice
    (dims e and e + Dh/2 pair up), computed in float32 and cast to the compute dtype."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dh, 2, dtype=torch.float32, device=device) / dh))
    angles = torch.arange(t, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]  # (T, Dh/2)
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def repeat_kv(x, n_rep: int):
    """(B, K, T, Dh) -> (B, K * n_rep, T, Dh), key/value head j // n_rep serving query head j."""
    b, k, t, dh = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None].expand(b, k, n_rep, t, dh).reshape(b, k * n_rep, t, dh)


def build_llama_peer(m, device: str = "cpu", gqa: str = "sdpa"):
    """Hugging Face's LlamaForCausalLM written out for a llama ModelConfig `m`, with its module and
    parameter names (`model.layers.{i}.self_attn.q_proj.weight`, ...). Initialised as laggrow
    initialises: N(0, 0.02), o_proj and down_proj N(0, 0.02 / sqrt(2 L)), norm scales ones, q/k/v
    biases zeros."""
    if gqa not in ("sdpa", "repeat"):
        raise ValueError(f"gqa: expected 'sdpa' or 'repeat', got {gqa!r}")
    nn = torch.nn
    std, out_std = 0.02, 0.02 / math.sqrt(2 * m.n_layers)
    h, kv, dh, d = m.n_heads, m.kv_heads, m.head_dim, m.d_model

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            x32 = x.float()
            y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + m.ln_eps)
            return self.weight * y.to(x.dtype)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(d, h * dh, bias=m.qkv_bias)
            self.k_proj = nn.Linear(d, kv * dh, bias=m.qkv_bias)
            self.v_proj = nn.Linear(d, kv * dh, bias=m.qkv_bias)
            self.o_proj = nn.Linear(h * dh, d, bias=False)
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                nn.init.normal_(proj.weight, std=std)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)
            nn.init.normal_(self.o_proj.weight, std=out_std)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            q = self.q_proj(x).view(b, t, h, dh).transpose(1, 2)  # (B, H, T, Dh)
            k = self.k_proj(x).view(b, t, kv, dh).transpose(1, 2)  # (B, K, T, Dh)
            v = self.v_proj(x).view(b, t, kv, dh).transpose(1, 2)
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # autocast: the projections' dtype
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            if kv == h:
                att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif gqa == "sdpa":
                att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                att = F.scaled_dot_product_attention(q, repeat_kv(k, h // kv), repeat_kv(v, h // kv), is_causal=True)
            return self.o_proj(att.transpose(1, 2).reshape(b, t, h * dh))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(d, m.d_ff, bias=False)
            self.up_proj = nn.Linear(d, m.d_ff, bias=False)
            self.down_proj = nn.Linear(m.d_ff, d, bias=False)
            nn.init.normal_(self.gate_proj.weight, std=std)
            nn.init.normal_(self.up_proj.weight, std=std)
            nn.init.normal_(self.down_proj.weight, std=out_std)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class DecoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = RMSNorm()
            self.self_attn = Attention()
            self.post_attention_layernorm = RMSNorm()
            self.mlp = MLP()

        def forward(self, x, cos, sin, dropout: float):
            x = x + F.dropout(self.self_attn(self.input_layernorm(x), cos, sin), dropout, self.training)
            return x + F.dropout(self.mlp(self.post_attention_layernorm(x)), dropout, self.training)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(m.vocab_size, d)
            nn.init.normal_(self.embed_tokens.weight, std=std)
            self.layers = nn.ModuleList(DecoderLayer() for _ in range(m.n_layers))
            self.norm = RMSNorm()

    class PeerLlama(nn.Module):
        def __init__(self, dropout: float = 0.0):
            super().__init__()
            self.dropout = dropout
            self.model = Model()
            if not m.tie_embeddings:
                self.lm_head = nn.Linear(d, m.vocab_size, bias=False)
                nn.init.normal_(self.lm_head.weight, std=std)

        def forward(self, tokens):
            x = self.model.embed_tokens(tokens)
            cos, sin = rope_cos_sin(tokens.shape[1], dh, m.rope_theta, tokens.device, x.dtype)
            for layer in self.model.layers:
                x = layer(x, cos, sin, self.dropout)
            x = self.model.norm(x)
            head = self.model.embed_tokens.weight if m.tie_embeddings else self.lm_head.weight
            return F.linear(x, head).float()

    return PeerLlama().to(device)


def decays(name: str, arch: str) -> bool:
    """laggrow's decay mask (`train.decay_mask`) by a peer parameter's name: every parameter decays
    but gpt's LayerNorms (ln1, ln2, ln_f) and llama's RMSNorm scales and q/k/v biases."""
    if arch == "llama":
        return "norm" not in name and not name.endswith(".bias")
    return ".ln" not in f".{name}"


def n_params(peer) -> int:
    """Distinct parameters (a tied embedding counted once, as `parameters()` yields it once)."""
    return sum(p.numel() for p in peer.parameters())


def _tensor(x):
    return torch.from_numpy(np.array(x, dtype=np.float32))


def load_laggrow_params(peer, params: dict, m) -> None:
    """Copy a laggrow params tree (model.py's layout) into the peer, so both compute one function."""
    if m.arch == "llama":
        return load_llama_params(peer, params, m)
    t = _tensor
    d = m.d_model
    blocks = params["blocks"]
    with torch.no_grad():
        peer.embed.weight.copy_(t(params["embed"]["tokens"]))
        if m.pos_emb == "learned":
            peer.pos.weight.copy_(t(params["pos"]["embedding"]))
        for i, block in enumerate(peer.blocks):
            block.ln1.weight.copy_(t(blocks["ln1"]["scale"][i]))
            block.ln1.bias.copy_(t(blocks["ln1"]["bias"][i]))
            block.w_qkv.weight.copy_(t(blocks["attn"]["w_qkv"][i]).reshape(d, 3 * d).T)
            block.w_out.weight.copy_(t(blocks["attn"]["w_out"][i]).reshape(d, d).T)
            block.ln2.weight.copy_(t(blocks["ln2"]["scale"][i]))
            block.ln2.bias.copy_(t(blocks["ln2"]["bias"][i]))
            block.w_in.weight.copy_(t(blocks["mlp"]["w_in"][i]).T)
            block.w_down.weight.copy_(t(blocks["mlp"]["w_out"][i]).T)
        peer.ln_f.weight.copy_(t(params["ln_f"]["scale"]))
        peer.ln_f.bias.copy_(t(params["ln_f"]["bias"]))
        if not m.tie_embeddings:
            peer.head.weight.copy_(t(params["head"]["w"]).T)


def load_llama_params(peer, params: dict, m) -> None:
    """laggrow's llama leaves into the Llama peer, by docs/design.md's table ("Two architectures,
    one layout"): each HF `[out, in]` matrix is laggrow's `[in, out]` one with its head axis merged,
    transposed; per-layer leaves are layer i of the stacked arrays."""
    t = _tensor
    d, h, kv, dh = m.d_model, m.n_heads, m.kv_heads, m.head_dim
    blocks, attn, mlp = params["blocks"], params["blocks"]["attn"], params["blocks"]["mlp"]
    with torch.no_grad():
        peer.model.embed_tokens.weight.copy_(t(params["embed"]["tokens"]))
        for i, layer in enumerate(peer.model.layers):
            sa = layer.self_attn
            layer.input_layernorm.weight.copy_(t(blocks["norm1"]["scale"][i]))
            sa.q_proj.weight.copy_(t(attn["w_q"][i]).reshape(d, h * dh).T)
            sa.k_proj.weight.copy_(t(attn["w_k"][i]).reshape(d, kv * dh).T)
            sa.v_proj.weight.copy_(t(attn["w_v"][i]).reshape(d, kv * dh).T)
            if m.qkv_bias:
                sa.q_proj.bias.copy_(t(attn["b_q"][i]).reshape(h * dh))
                sa.k_proj.bias.copy_(t(attn["b_k"][i]).reshape(kv * dh))
                sa.v_proj.bias.copy_(t(attn["b_v"][i]).reshape(kv * dh))
            sa.o_proj.weight.copy_(t(attn["w_o"][i]).reshape(h * dh, d).T)
            layer.post_attention_layernorm.weight.copy_(t(blocks["norm2"]["scale"][i]))
            layer.mlp.gate_proj.weight.copy_(t(mlp["w_gate"][i]).T)
            layer.mlp.up_proj.weight.copy_(t(mlp["w_up"][i]).T)
            layer.mlp.down_proj.weight.copy_(t(mlp["w_down"][i]).T)
        peer.model.norm.weight.copy_(t(params["norm_f"]["scale"]))
        if not m.tie_embeddings:
            peer.lm_head.weight.copy_(t(params["head"]["w"]).T)


def make_peer_step(cfg, device: str = "cpu", compile: bool | None = None, gqa: str = "sdpa"):
    """(peer, step): `step(tokens (B, T+1) int64 tensor) -> loss tensor` is one AdamW step of the
    peer of `cfg.model.arch` with laggrow's schedule, betas, weight decay (weights only) and
    clipping. `gqa`: see `build_peer`."""
    import jax.numpy as jnp

    from laggrow import train

    m, tc = cfg.model, cfg.train
    peer = build_peer(m, device, gqa)
    peer.dropout = tc.dropout
    cuda = device.startswith("cuda")
    # laggrow's decay mask: weights decay; LayerNorms (gpt), RMSNorm scales and biases (llama) do not
    decay = [p for name, p in peer.named_parameters() if decays(name, m.arch)]
    keep = [p for name, p in peer.named_parameters() if not decays(name, m.arch)]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8,
                            **({"fused": True} if cuda else {}))
    lrs = np.asarray(train.make_schedule(tc)(jnp.arange(tc.steps)), dtype=np.float64)
    autocast = m.dtype == "bfloat16"
    compiled = torch.compile(peer) if (cuda if compile is None else compile) else peer
    counter = {"step": 0}

    def step(tokens):
        for g in opt.param_groups:
            g["lr"] = float(lrs[min(counter["step"], len(lrs) - 1)])
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = compiled(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, m.vocab_size).float(), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(peer.parameters(), tc.grad_clip)
        opt.step()
        counter["step"] += 1
        return loss

    peer.train()
    return peer, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/small.yaml")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each trainer per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="the peer's intra-op threads (default: the CPU count, what torch would pick)")
    parser.add_argument("--gqa", choices=("sdpa", "repeat"), default="sdpa",
                        help="llama with n_kv_heads < n_heads: SDPA's enable_gqa (default, transformers' choice on "
                             "torch >= 2.5) or repeat_kv's copy of the key/value heads")
    args = parser.parse_args()
    if torch is None:
        print(INSTALL, file=sys.stderr)
        sys.exit(2)

    import jax

    from laggrow import model, train
    from laggrow.config import load_run_config

    cfg = load_run_config(args.config, args.overrides)
    m, t = cfg.model, cfg.train
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.torch_threads)
    tokens = t.batch_size * cfg.data.seq_len
    batch = np.random.default_rng(0).integers(0, m.vocab_size, (t.batch_size, cfg.data.seq_len + 1), dtype=np.int32)
    torch_batch = torch.from_numpy(batch.astype(np.int64)).to(device)

    torch.manual_seed(0)
    peer, peer_step = make_peer_step(cfg, device, gqa=args.gqa)
    if n_params(peer) != m.n_params():
        print(f"peer has {n_params(peer):,} parameters, laggrow's model {m.n_params():,}: not the same model",
              file=sys.stderr)
        sys.exit(1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    state = {"s": train.init_state(model.init_params(m, jax.random.key(0)), train.make_optimizer(t))}
    step = train.jit_train_step(m, t)

    def laggrow_steps(n: int) -> float:
        c = time.perf_counter()
        for _ in range(n):
            state["s"], metrics = step(state["s"], batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - c

    def peer_steps(n: int) -> float:
        c = time.perf_counter()
        for _ in range(n):
            loss = peer_step(torch_batch)
        loss.item()
        sync()
        return time.perf_counter() - c

    first = {"laggrow": laggrow_steps(1), "peer": peer_steps(1)}  # compilation (and allocator warm-up)
    laggrow_steps(1), peer_steps(1)
    rounds = []
    for r in range(args.rounds):
        # the order swaps every round: neither always runs right after the other
        if r % 2 == 0:
            lg = laggrow_steps(args.steps) / args.steps
            pe = peer_steps(args.steps) / args.steps
        else:
            pe = peer_steps(args.steps) / args.steps
            lg = laggrow_steps(args.steps) / args.steps
        rounds.append((lg, pe))
    ratios = sorted(pe / lg for lg, pe in rounds)  # laggrow tokens/s over the peer's
    lg_s = statistics.median(lg for lg, _ in rounds)
    pe_s = statistics.median(pe for _, pe in rounds)

    mode = "torch.compile, fused AdamW" if device == "cuda" else "eager"
    print(f"config            {args.config} {' '.join(args.overrides)}")
    if m.arch == "llama":
        gqa = "" if m.kv_heads == m.n_heads else f", {args.gqa} GQA"
        arch = (f"llama ({m.kv_heads} kv heads{gqa}, rope theta {m.rope_theta:g}"
                f"{', q/k/v biases' if m.qkv_bias else ''}), ")
    else:
        arch = ""
    print(f"model             {arch}{m.n_layers} layers, d_model {m.d_model}, d_ff {m.d_ff}, heads {m.n_heads}, "
          f"vocab {m.vocab_size}, {m.pos_emb} positions, {'tied' if m.tie_embeddings else 'untied'}, {m.dtype}; "
          f"batch {t.batch_size} x seq {cfg.data.seq_len}")
    print(f"parameters        laggrow {m.n_params():,}  peer {n_params(peer):,}")
    print(f"devices           jax {jax.devices()}; torch {torch.__version__} on {device} ({mode}), "
          f"{torch.get_num_threads()} threads")
    print(f"first step        laggrow {first['laggrow']:.2f} s (compile)  peer {first['peer']:.2f} s")
    print(f"laggrow           {lg_s * 1e3:8.1f} ms/step  {tokens / lg_s:10,.0f} tokens/s  (median of {args.rounds} "
          f"rounds of {args.steps} steps)")
    print(f"peer (torch)      {pe_s * 1e3:8.1f} ms/step  {tokens / pe_s:10,.0f} tokens/s")
    print(f"laggrow / peer    {statistics.median(ratios):.2f}x tokens/s (median of per-round ratios; range "
          f"{ratios[0]:.2f}x to {ratios[-1]:.2f}x)")


if __name__ == "__main__":
    main()
