"""A training run's settings, kept for its whole life in config.json.

`config.json` in a training workdir holds the history of the run's
configurations: `{"history": [{"step": S, "config": {...}, "changes":
[...]}, ...]}`, one entry per start or resume under new settings, S the
checkpoint step it started from. A resume under settings that change the
result (learning rate, batch size, seed, noise, sigma, model, epochs,
optimizer, data order, ...: every field but those of `IGNORED`) is refused
with one line naming each changed field, unless the config says
`allow_changed_config=True`: then the change is recorded in the history and
training goes on. A config.json of an earlier version (the plain config) is
read as the history's first entry.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

CONFIG_FILE = "config.json"
# Fields that do not change the trained parameters: where data and logs go,
# evaluation, certification and study settings, this file's own override.
IGNORED = frozenset(
    {
        "data_dir",
        "eval_batch_size",
        "eval_max_examples",
        "keep_checkpoints",
        "checkpoint_every_steps",
        "decode_workers",
        "log_every_steps",
        "allow_changed_config",
    }
)
IGNORED_PREFIXES = ("certify.", "study.")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flat(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _as_json(config) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def read_history(workdir: str) -> list[dict[str, Any]]:
  """The history of config.json (empty if there is none)."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      stored = json.load(f)
  except FileNotFoundError:
    return []
  except json.JSONDecodeError as e:
    raise ValueError(
        f"{path} is not valid JSON ({e}); restore it, or delete it to "
        "record the current settings as the run's."
    ) from None
  if isinstance(stored, dict) and isinstance(stored.get("history"), list):
    return stored["history"]
  return [{"step": None, "config": stored, "changes": []}]  # Earlier format.


def changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """'field: X then, Y now' for every field that changes the result."""
  old, new = _flat(before), _flat(now)
  return [
      f"{k}: {old.get(k, '<unset>')!r} then, {new.get(k, '<unset>')!r} now"
      for k in sorted(set(old) | set(new))
      if k not in IGNORED
      and not k.startswith(IGNORED_PREFIXES)
      and old.get(k) != new.get(k)
  ]


def check_and_record(
    config, workdir: str, step: int | None, *, write: bool
) -> None:
  """Refuses to resume the run of workdir (at checkpoint `step`; None: no
  checkpoint, a new start) under other settings unless allowed, and
  records this start in config.json (when `write`: process 0)."""
  history = read_history(workdir)
  now = _as_json(config)
  changed = changes(history[-1]["config"], now) if history else []
  if step is not None and changed:
    if not config.get("allow_changed_config", False):
      raise ValueError(
          f"The run in {workdir!r} was trained with other settings, which "
          f"change the result: {'; '.join(changed)}. Resume with the run's "
          f"settings ({CONFIG_FILE} there), use a new --workdir, or pass "
          f"--config.allow_changed_config=True to record the change and go on."
      )
  if history and not changed:
    return  # The same settings: nothing new to record.
  entry = {"step": step or 0, "config": now, "changes": changed}
  if write:
    _atomic_write(
        os.path.join(workdir, CONFIG_FILE), {"history": history + [entry]}
    )


def _atomic_write(path: str, obj: Any) -> None:
  fd, tmp = tempfile.mkstemp(
      prefix=CONFIG_FILE + ".", suffix=".tmp", dir=os.path.dirname(path)
  )
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
