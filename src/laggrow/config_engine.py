"""The config engine every config file of laggrow goes through (runs, pools, stacking,
experiments): a dataclass built from a mapping with each key checked (`build_dataclass`,
`check_known_keys`, `coerce`), YAML with YAML 1.2 floats, no repeated keys and bounded integers
(`parse_yaml`, `read_yaml`), `--set section.key=value` overrides (`apply_overrides`), and the one
form of a config error, one line naming the key (`require`, `shown`). It knows nothing of what a
run, a pool or an experiment is (`laggrow.config` holds the run's sections). No jax here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from laggrow.errors import KeyValueError, LaggrowError


def differences(now: Any, then: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts, as `key: THEN there, NOW here`
    (what a directory refused for holding another run's config says)."""
    if isinstance(now, dict) and isinstance(then, dict):
        out = []
        for key in sorted(set(now) | set(then)):
            out += differences(now.get(key), then.get(key), f"{prefix}{key}.")
        return out
    return [] if now == then else [f"{prefix.rstrip('.')}: {then!r} there, {now!r} here"]


def require(ok: bool, key: str, expected: str, got: Any) -> None:
    """The one form of a config error: `key: expected X, got Y`."""
    if not ok:
        raise KeyValueError(key, f"expected {expected}, got {shown(got)}")


def shown(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, so a message stays one readable line (Python
    refuses to print an int of more than 4300 digits at all)."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate `cls` from `values`, rejecting unknown keys and checking each value's type."""
    if not isinstance(values, dict):
        raise LaggrowError(f"{where}: expected a mapping of keys to values, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    check_known_keys(cls, values, where)
    return cls(**{key: coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()})


def check_known_keys(cls: type, values: dict[str, Any], where: str) -> None:
    """One line for the first key of `values` that is not a field of dataclass `cls`, with the
    nearest field's name when there is one."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            name = key if isinstance(key, str) and key.isprintable() and len(key) <= 80 else shown(key)
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (expected one of: {', '.join(known)})"
            raise LaggrowError(f"{where}.{name}: unknown key{hint}")


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Check `value` against a simple annotation (int, float, bool, str, dict, list, Optional)."""
    origin = typing.get_origin(typ)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise LaggrowError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise LaggrowError(f"{where}: expected an integer, got {shown(value)}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond the largest float
                number = math.inf
            if math.isfinite(number):
                return number
            raise LaggrowError(f"{where}: expected a finite number, got {shown(value)}")
        raise LaggrowError(f"{where}: expected a number, got {shown(value)}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise LaggrowError(f"{where}: expected a string, got {shown(value)}")
    if origin in (list, tuple) or typ in (list, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(value) if (origin is tuple or typ is tuple) else list(value)
        raise LaggrowError(f"{where}: expected a list, got {shown(value)}")
    if origin is dict or typ is dict:
        if isinstance(value, dict):
            return value
        raise LaggrowError(f"{where}: expected a mapping, got {shown(value)}")
    return value


# The most digits an integer of a config may have: below Python's own limit on converting digits to
# an int (4300), whose error would advise `sys.set_int_max_str_digits()` instead of naming the value.
# Shorter integers are read, and refused by the bounds of the key they are given to.
MAX_INT_DIGITS = 4000


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` (no dot) as a string; scientific notation is common in configs
    (`lr: 3e-4`, and `json.dumps` writes `1e-05`), so floats are resolved as YAML 1.2 does.

    A key given twice in one mapping is refused (PyYAML keeps the last silently, so a user editing
    the first one would change nothing), and so is an integer of more than MAX_INT_DIGITS digits."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: PyYAML's own check names it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {shown(key)} appears twice in one mapping (first at line "
                        f"{first.line + 1}; expected each key once)", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.Node) -> int:
        digits = sum(ch.isalnum() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {digits} digits (expected a number of at most {MAX_INT_DIGITS} "
                "digits; steps, sizes and seeds fit 32 bits)", node.start_mark)
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)

_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML with the loader above. What PyYAML lets escape besides YAMLError (an integer of more
    than 4300 digits, nesting deeper than the stack) is raised as a YAMLError too."""
    try:
        return yaml.load(text, Loader=_Loader)
    except (ValueError, OverflowError, RecursionError) as err:
        problem = str(err).split("\n")[0][:120] or type(err).__name__
        raise yaml.constructor.ConstructorError(problem=problem) from None


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing file or malformed YAML."""
    path = Path(path)
    if not path.is_file():
        raise LaggrowError(f"{what} {path}: file not found (expected a YAML file)")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid syntax"
        raise LaggrowError(f"{what} {path}: malformed YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise LaggrowError(f"{what} {path}: not UTF-8 text (expected a YAML file)") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LaggrowError(f"{what} {path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def parse_override(item: str, text: str) -> Any:
    """The value of `--set KEY=TEXT`, parsed as YAML; one line when it is not YAML (rather than
    keeping the text as a string the user did not write: `[1, 2` is not a list)."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "invalid syntax"
        raise LaggrowError(f"--set {shown(item)}: the value cannot be read as YAML ({problem}); expected a "
                           "YAML value, e.g. 8, 1e-3, true, [1, 2] or a quoted string") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `section.key=value` overrides; the value is parsed as YAML (`8`, `true`, `1e-3`)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides or []:
        if "=" not in item:
            raise LaggrowError(f"--set {item!r}: expected section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise LaggrowError(f"--set {item!r}: expected section.key=value, e.g. model.n_layers=8")
        value = parse_override(item, text)
        if raw.get(parts[0]) is None:  # absent, or an empty `model:` in the file
            raw[parts[0]] = {}
        section = raw[parts[0]]
        if not isinstance(section, dict):
            raise LaggrowError(f"--set {item!r}: section '{parts[0]}' is not a mapping")
        section[parts[1]] = value
    return raw
