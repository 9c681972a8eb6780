"""Hugging Face weight files: reading a model directory's safetensors (one file, or shards with
their index) lazily and checked, and writing them in shards (names in `laggrow.store`).

Reading opens every file with `safetensors.safe_open` (a memory map: a header is parsed, no
tensor is read) and checks what can be checked before a byte of weights is read: each file
whole (a truncated file fails its header check), every shard the index names present, every
tensor the model needs present with its shape, none unexpected. `get` then reads one tensor at
a time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors reads BF16 tensors through it)
import numpy as np

from laggrow import store
from laggrow.errors import LaggrowError
from laggrow.hf import convert

# safetensors dtypes laggrow reads, and the numpy dtype of each
DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def numpy_dtype(name: str) -> np.dtype:
    """float32, float16, or bfloat16 (ml_dtypes', as jax has it)."""
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _one_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


class WeightFiles:
    """The safetensors files of a Hugging Face model directory, opened and checked."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        index_file = self.dir / store.HF_WEIGHTS_INDEX
        single = self.dir / store.HF_WEIGHTS_FILE
        if index_file.is_file():
            index = store.read_json(index_file, "index of the weight shards")
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map or \
                    not all(isinstance(v, str) for v in weight_map.values()):
                raise LaggrowError(f"{index_file}: no weight_map of tensor names to shard files (expected "
                                   "Hugging Face's index of a sharded checkpoint)")
            names = sorted(set(weight_map.values()))
        elif single.is_file():
            weight_map, names = None, [store.HF_WEIGHTS_FILE]
        else:
            raise LaggrowError(f"{self.dir}: no {store.HF_WEIGHTS_FILE} and no {store.HF_WEIGHTS_INDEX} (expected "
                               "the weights as safetensors; PyTorch .bin checkpoints are not read)")
        self.files: list[Path] = []
        self.where: dict[str, Path] = {}  # tensor name -> its file
        self._handles: dict[Path, Any] = {}
        for name in names:
            path = self.dir / name
            if Path(name).name != name or not path.is_file():
                raise LaggrowError(f"{index_file}: names the shard {name}, which is not in {self.dir} (expected "
                                   "every shard the index names)")
            try:
                handle = safe_open(str(path), framework="numpy")
            except Exception as err:  # safetensors raises its own SafetensorError for a damaged file
                raise LaggrowError(f"{path}: not a readable safetensors file ({_one_line(err)}); is it truncated "
                                   "or damaged?") from None
            self.files.append(path)
            self._handles[path] = handle
            for key in handle.keys():
                if key in self.where:
                    raise LaggrowError(f"{path}: holds {key}, which {self.where[key].name} holds too (expected "
                                       "each tensor once)")
                self.where[key] = path
        if weight_map is not None:
            for key, name in weight_map.items():
                if self.where.get(key) != self.dir / name:
                    raise LaggrowError(f"{index_file}: puts {key} in {name}, which does not hold it (expected the "
                                       "index of these shards)")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.where[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The tensor's dtype as laggrow names it, or one line for one it does not read."""
        stored = self._handles[self.where[name]].get_slice(name).get_dtype()
        if stored not in DTYPES:
            raise LaggrowError(f"{self.where[name]}: {name} is {stored} (expected one of "
                               f"{', '.join(DTYPES)}: unquantized floating-point weights)")
        return DTYPES[stored]

    def get(self, name: str) -> np.ndarray:
        """One tensor, read now (a numpy array of its stored dtype)."""
        path = self.where[name]
        try:
            return self._handles[path].get_tensor(name)
        except Exception as err:
            raise LaggrowError(f"{path}: {name} cannot be read ({_one_line(err)}); is the file damaged?") from None

    def close(self) -> None:
        """Drop the files' memory maps (their pages count as this process's memory while mapped)."""
        self._handles.clear()

    def check(self, cfg, config_file: Path) -> None:
        """Every tensor `cfg` needs is here with its shape and a dtype laggrow reads, and nothing
        else is (a buffer of RoPE's frequencies aside); a tied model's lm_head, if saved, must be
        its embedding."""
        wanted = convert.tensors(cfg)
        names = {t.name for t in wanted}
        for t in wanted:
            if t.name not in self.where:
                raise LaggrowError(f"{self.dir}: no tensor {t.name} (expected by {config_file.name}: "
                                   f"{cfg.n_layers} layers{', untied embeddings' if not cfg.tie_embeddings else ''}"
                                   f"{', q/k/v biases' if cfg.qkv_bias else ''})")
            got = self.shape(t.name)
            if got != t.shape:
                raise LaggrowError(f"{self.where[t.name]}: {t.name} has shape {list(got)}, {config_file.name} says "
                                   f"{list(t.shape)} (expected the tensors of the model config.json describes)")
            self.dtype(t.name)
        for name in sorted(self.where):
            if name in names or name.endswith(convert.IGNORED_SUFFIXES):
                continue
            if name == convert.HEAD and cfg.tie_embeddings:
                if not np.array_equal(self.get(convert.HEAD), self.get(convert.EMBED)):
                    raise LaggrowError(f"{config_file}: tie_word_embeddings true, but {self.where[name].name} holds "
                                       f"an {convert.HEAD} that differs from {convert.EMBED} (expected tied weights)")
                continue
            raise LaggrowError(f"{self.where[name]}: holds {name}, which {config_file.name} does not describe "
                               "(expected the tensors of a dense Llama-family model)")

    def digests(self) -> dict[str, Any]:
        """sha256 of each weight file (and of the index), and one over them all."""
        files = {p.name: store.sha256_of(p) for p in self.files}
        index = self.dir / store.HF_WEIGHTS_INDEX
        if index.is_file():
            files[index.name] = store.sha256_of(index)
        total = hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
        return {"files": files, "sha256": total}


# ---- writing ------------------------------------------------------------------------------------

# what transformers checks in a safetensors file's metadata before it loads it
METADATA = {"format": "pt"}


def parse_size(text: str, what: str = "--shard-size") -> int:
    """Bytes of '5GB', '500MB', '2GiB', '100KB' or a plain number of bytes (decimal units are
    powers of 1000, as Hugging Face's max_shard_size)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    raw = str(text).strip().upper()
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0 or value * units[unit] < 1 or value * units[unit] > 2**62:
        raise LaggrowError(f"{what}: expected a size such as 5GB, 500MB or 2GiB, got {text!r}")
    return int(value * units[unit])


def plan_shards(sizes: list[tuple[str, int]], shard_size: int) -> list[list[str]]:
    """Tensors (name, bytes), in order, packed greedily into shards of at most `shard_size`
    bytes each (a tensor larger than that gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes:
        if shards[-1] and used + size > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_weights(directory: Path, tensors: list[tuple[str, Any]], shard_size: int) -> list[str]:
    """Write the tensors `(name, make)` (`make()` gives the numpy array, so that only a shard's
    tensors are held at once) as model.safetensors, or as shards with their index when they come
    to more than `shard_size` bytes. Returns the files written."""
    sizes = [(name, nbytes) for name, nbytes, _ in tensors]
    makers = {name: make for name, _, make in tensors}
    shards = plan_shards(sizes, shard_size)
    if len(shards) == 1:
        store.write_safetensors(directory / store.HF_WEIGHTS_FILE, {n: makers[n]() for n in shards[0]}, METADATA)
        return [store.HF_WEIGHTS_FILE]
    files, weight_map = [], {}
    for i, names in enumerate(shards, start=1):
        file = store.hf_shard_name(i, len(shards))
        store.write_safetensors(directory / file, {n: makers[n]() for n in names}, METADATA)
        files.append(file)
        weight_map.update({n: file for n in names})
    store.write_json(directory / store.HF_WEIGHTS_INDEX,
                     {"metadata": {"total_size": sum(size for _, size in sizes)}, "weight_map": weight_map})
    return [*files, store.HF_WEIGHTS_INDEX]
