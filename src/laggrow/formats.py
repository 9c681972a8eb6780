"""The version of the records laggrow writes, and the one place an older record is brought to the
current shape when it is read (as big_vision's `fix_old_checkpoints` does for its checkpoints).

A run's config.json and a pool's pool.json carry `format_version` (`FORMAT_VERSION`). A record
without it was written before the key existed: version 0. Every reader passes a record through
`migrate` first, so no reader keeps a special case for an older laggrow; a record of a newer
laggrow than this one is refused in one line rather than misread.

Version 0 -> 1: nothing but the key itself. The config keys added after runs were first saved
(`ADDED_KEYS`) were, and are, written only where not at their defaults, and read back with their
defaults where absent (`config.build_dataclass`): that omission is not an old shape to migrate but
the run's identity. `RunConfig.to_dict` is what a checkpoint's config fingerprint and a resume's
comparison are taken of, so an existing run's fingerprint stays what it was only if a new run of
the same config gives the same dict: `format_version` is therefore written beside that dict in the
file (`with_version`) and never part of it, and `ADDED_KEYS` says in one table which keys
`to_dict` leaves out at their defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laggrow.errors import LaggrowError

FORMAT_VERSION = 1
KEY = "format_version"

# Keys added to a config section after runs were first saved, written (to config.json and so to a
# checkpoint's fingerprint) only where they differ from their defaults, so that a run saved before
# they existed has the very config, and fingerprint, of the same run saved now.
ADDED_KEYS: dict[str, tuple[str, ...]] = {
    # how the model is computed (docs/design.md, "How the model is computed")
    "model": ("attention", "scan_layers", "loss_chunk",
              # the architecture and its options ("Two architectures, one layout")
              "arch", "n_kv_heads", "rope_theta", "qkv_bias"),
    "train": ("warmup_start",),
}


# the sections whose added keys are left out only at a default of the same type (an int 0 is not
# a bool False there); train's are left out when equal. Both rules are the fingerprints' as they were.
_SAME_TYPE = ("model",)


def without_added_defaults(section: str, values: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """`values` (a config section's fields) less the `ADDED_KEYS` of `section` that are at their
    default (`getattr(defaults, key)`)."""
    out = dict(values)
    for key in ADDED_KEYS.get(section, ()):
        default = getattr(defaults, key)
        if key in out and out[key] == default and (section not in _SAME_TYPE or type(out[key]) is type(default)):
            del out[key]
    return out


def with_version(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as laggrow writes it to disk: with the current `format_version`."""
    return {**record, KEY: FORMAT_VERSION}


def migrate(record: dict[str, Any], path: Path | str, what: str) -> dict[str, Any]:
    """`record` (read from `path`) in the current shape, `format_version` taken out: the one
    function that knows what older laggrows wrote. One line for a version this laggrow does not
    know (a newer laggrow's, or a damaged key)."""
    version = record.get(KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise LaggrowError(f"{path}: {KEY} must be a non-negative integer, got {version!r} (expected the {what}; "
                           "is it damaged?)")
    if version > FORMAT_VERSION:
        raise LaggrowError(f"{path}: {KEY} {version} is newer than this laggrow's {FORMAT_VERSION} (expected the "
                           f"{what} of this version or an older one; upgrade laggrow to read it)")
    out = {k: v for k, v in record.items() if k != KEY}
    # version 0 -> 1: the key alone (see the module's docstring); a later change of shape goes here
    return out
