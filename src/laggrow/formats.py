"""The version of the records laggrow writes, and the one place an older record is brought to the
current shape when it is read (as big_vision's `fix_old_checkpoints` does for its checkpoints).

A run's config.json, a pool's pool.json and a stacking directory's stack-config.json and stack.json
carry `format_version` (`FORMAT_VERSION`). A record without it was written before the key existed:
version 0. Every reader passes a record through `migrate` first, so no reader keeps a special case
for an older laggrow; a record of a newer laggrow than this one is refused in one line rather than
misread, and so is an older one whose numbers meant something else.

Version 0 -> 1:
- a run's config and a pool's record: nothing but the key itself. The config keys added after runs
  were first saved (`ADDED_KEYS`) were, and are, written only where not at their defaults, and read
  back with their defaults where absent (`config.build_dataclass`): that omission is not an old shape
  to migrate but the run's identity. `RunConfig.to_dict` is what a checkpoint's config fingerprint
  and a resume's comparison are taken of, so an existing run's fingerprint stays what it was only if
  a new run of the same config gives the same dict: `format_version` is therefore written beside that
  dict in the file (`with_version`) and never part of it, and `ADDED_KEYS` says in one table which
  keys `to_dict` leaves out at their defaults.
- a stacking record: its own key, `format`, before `format_version`. `format: 2` is today's shape
  (losses on a test set apart from adaptive's selection set, every method at adaptive's FLOPs) and
  loses the key; `format: 1` (or none) measured neither way and is refused, not migrated.

What older laggrows left out that no migration can supply, and how the readers treat it:
- a run without data.json (made by a laggrow before it recorded the corpus's fingerprint): its
  corpus is not checked on resume, and the resumed run writes one (`run_dir.check_data`,
  jobs/training.py);
- a pool without `data_stream` or `evaluation` (probed by a laggrow that replayed the source's
  batches, or chose on the windows it reported): its records read back (correlate, report), but
  train-final refuses to continue it (`require_continuable_pool`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laggrow.errors import LaggrowError

FORMAT_VERSION = 1
KEY = "format_version"
# the kinds of record `migrate` reads
RUN, POOL, STACK = "run", "pool", "stack"
# a stacking record's own version key before format_version, and its value in today's shape
_STACK_FORMAT_KEY, _STACK_FORMAT = "format", 2

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


def migrate(record: dict[str, Any], path: Path | str, what: str, kind: str) -> dict[str, Any]:
    """`record` (read from `path`; `kind` one of RUN, POOL, STACK) in the current shape,
    `format_version` taken out: the one function that knows what older laggrows wrote. One line for
    a version this laggrow does not know (a newer laggrow's, or a damaged key), or an older record
    whose numbers mean something else."""
    version = record.get(KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise LaggrowError(f"{path}: {KEY} must be a non-negative integer, got {version!r} (expected the {what}; "
                           "is it damaged?)")
    if version > FORMAT_VERSION:
        raise LaggrowError(f"{path}: {KEY} {version} is newer than this laggrow's {FORMAT_VERSION} (expected the "
                           f"{what} of this version or an older one; upgrade laggrow to read it)")
    out = {k: v for k, v in record.items() if k != KEY}
    if version == 0 and kind == STACK:  # 0 -> 1: see the module's docstring
        found = out.pop(_STACK_FORMAT_KEY, 1)
        if found != _STACK_FORMAT:
            raise LaggrowError(f"{path}: written by another version of laggrow stack (record format {found}, expected "
                               f"{_STACK_FORMAT}: losses on a test set apart from adaptive's selection set, every "
                               "method at adaptive's FLOPs); run laggrow stack again into a new --out")
    # a later change of shape goes here
    return out


def require_continuable_pool(meta: dict[str, Any], path: Path | str) -> None:
    """One line if a pool's record (`migrate`d) lacks what continuing it needs: where its batch
    stream starts (`data_stream`) and which held-out windows choose and which report
    (`evaluation`); pools probed by an older laggrow recorded neither."""
    stream = meta.get("data_stream")
    if not isinstance(stream, dict) or not isinstance(stream.get("start"), int) or stream["start"] < 0:
        raise LaggrowError(f"{path}: no data_stream record (probed by a laggrow that replayed the source's "
                           "batches, or damaged); probe again into a new --out")
    if not isinstance(meta.get("evaluation"), dict):
        raise LaggrowError(f"{path}: no evaluation record (probed by a laggrow that read choices and results on the "
                           "same held-out windows, or damaged); probe again into a new --out")
