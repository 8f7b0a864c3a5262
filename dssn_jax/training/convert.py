"""Converts the authors' PyTorch checkpoints (Levine & Feizi 2021) to Flax.

The authors' code (built on Yang et al.'s rs4a) saves `model.state_dict()` of
a module holding `norm = DataParallel(NormalizeLayer)` and `model =
DataParallel(net)`, so a checkpoint is a flat dict of tensors:

  norm.module.mu, norm.module.log_sig   (C, 1, 1): mean = mu, std = exp(log_sig)
  model.module.<net key>                the network's own state_dict

(`model.` / `norm.` without `module.` are accepted too, and a dict that wraps
the state_dict under `state_dict` or `model_state_dict`.) Networks: "wrn_40_2"
(their CIFAR-10 model), "resnet50" (torchvision, their ImageNet model),
"resnet110" (Cohen et al.'s layout with projection shortcuts) and
"resnet110_zero_pad" (Idelbayev's option-A ResNet-110 of their rs4a code,
whose classifier is called `linear`: its `linear.*` keys map to `fc`).

Key mapping (the rule of the dssn_jax.models docstrings): the net key splits
at its first numeric part, `block1.layer.0.bn1.weight` ->
`params/block1_layer_0/bn1/scale`, `layer2.0.downsample.1.running_var` ->
`batch_stats/layer2_0/downsample_1/var`. BatchNorm weight, bias, running_mean,
running_var -> scale, bias, mean, var; convolution and linear weight ->
kernel, OIHW -> HWIO and (out, in) -> (in, out); `num_batches_tracked` is
dropped. The state_dict carries no BatchNorm epsilon: both the authors'
networks use PyTorch's default 1e-5, which is `models.layers.BN_EPSILON`.

  state_dict = load_torch_checkpoint("cifar_0.25.pth")     # needs torch
  converted = convert_state_dict(state_dict, "wrn_40_2")   # validates
  write_checkpoint(converted, "runs/authors_0.25", sigma=0.25)

Validation is complete before anything is written: unknown keys, missing keys,
shape mismatches, non-finite values and a likely wrong architecture are one
ValueError that names the offending keys.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import functools
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dssn_jax import models
from dssn_jax.core import smoothing
from dssn_jax.data import datasets
from dssn_jax.training import checkpoints

ARCHITECTURES = ("wrn_40_2", "resnet110", "resnet110_zero_pad", "resnet50")
# The torch name of the classifier layer (our models call it `fc`).
_TORCH_HEAD = {"resnet110_zero_pad": "linear"}
# The datasets of the authors' models (facts in `datasets.dataset_info`).
DATASETS = ("cifar10", "imagenet2012")
TORCH_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default.
MODEL_PREFIXES = ("model.module.", "model.")
NORM_KEYS = {
    "mu": ("norm.module.mu", "norm.mu"),
    "log_sig": ("norm.module.log_sig", "norm.log_sig"),
}
_MAX_LISTED = 12  # Offending keys listed per kind in an error message.


@dataclasses.dataclass(frozen=True)
class ConvertedModel:
  """A converted network with its normalization.

  Attributes:
    arch: model name for `models.create_model`.
    variables: {"params", "batch_stats"}, nested dicts of float32 numpy arrays
      in the layout of the Flax model.
    mean, std: per-channel input normalization, [0, 1] pixel units.
    num_classes: number of logits (rows of the torch `fc.weight`).
  """

  arch: str
  variables: dict[str, Any]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_classes: int


def load_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint into numpy arrays (torch is imported here).

  Uses `torch.load(map_location="cpu", weights_only=True)`: tensors and plain
  containers only, no arbitrary pickled objects.

  Args:
    path: a `.pth` / `.pt` file.

  Returns:
    The state_dict, key -> numpy array (floating tensors as float32).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "Reading PyTorch checkpoints needs torch: "
        "pip install 'dssn-jax[torch]'."
    ) from e
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No checkpoint file {path!r}.")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several types for foreign pickles.
    raise ValueError(
        f"{path!r} is not a PyTorch checkpoint that loads with "
        f"weights_only=True ({type(e).__name__}: {e})."
    ) from e
  state_dict = unwrap_state_dict(obj)
  arrays, bad = {}, []
  for key, value in state_dict.items():
    if not isinstance(value, torch.Tensor):
      bad.append(key)
      continue
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    arrays[key] = value.numpy()
  if bad:
    raise ValueError(
        f"{path!r}: entries that are not tensors: " f"{_listing(bad)}."
    )
  return arrays


def unwrap_state_dict(obj: Any) -> Mapping[str, Any]:
  """The state_dict in a checkpoint: `obj` itself or its `state_dict` /
  `model_state_dict` entry."""
  if not isinstance(obj, Mapping):
    raise ValueError(
        f"Expected a state_dict (a dict of tensors), got "
        f"{type(obj).__name__}."
    )
  for name in ("state_dict", "model_state_dict"):
    if isinstance(obj.get(name), Mapping):
      return obj[name]
  return obj


def flax_path(key: str, ndim: int) -> tuple[str, ...]:
  """Flax variable path of a network key (without the `model.module.` prefix).

  Args:
    key: e.g. "block1.layer.0.bn1.running_var".
    ndim: rank of the tensor (tells a weight kernel from a BatchNorm scale).

  Returns:
    e.g. ("batch_stats", "block1_layer_0", "bn1", "var").
  """
  *modules, leaf = key.split(".")
  numeric = [i for i, part in enumerate(modules) if part.isdigit()]
  if numeric:
    cut = numeric[0] + 1
    modules = ["_".join(modules[:cut])] + (
        ["_".join(modules[cut:])] if modules[cut:] else []
    )
  if leaf in ("running_mean", "running_var"):
    return ("batch_stats", *modules, leaf[len("running_") :])
  if leaf == "weight":
    leaf = "kernel" if ndim > 1 else "scale"
  return ("params", *modules, leaf)


def torch_key(path: tuple[str, ...]) -> str:
  """Inverse of `flax_path`: ("params", "layer2_0", "conv1", "kernel") ->
  "layer2.0.conv1.weight" (module names of our models hold no "_")."""
  collection, *modules, leaf = path
  leaf = {
      "kernel": "weight",
      "scale": "weight",
      "mean": "running_mean",
      "var": "running_var",
  }.get(leaf, leaf)
  del collection
  return ".".join([m.replace("_", ".") for m in modules] + [leaf])


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:  # HWIO -> OIHW.
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))  # (in, out) -> (out, in); 1-D unchanged.


def _to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # OIHW -> HWIO.
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if array.ndim == 2:  # Linear (out, in) -> (in, out).
    return np.ascontiguousarray(array.T)
  return array


@functools.cache
def expected_state_dict(arch: str, num_classes: int) -> dict[str, tuple]:
  """Network key -> torch shape of the architecture's PyTorch state_dict
  (without `num_batches_tracked`), derived from the Flax model."""
  model = models.create_model(
      arch, num_classes=num_classes, mean=(0.0,), std=(1.0,)
  )
  # Parameter shapes do not depend on the spatial size; 64x64 traces faster.
  x = jnp.zeros((1, 64, 64, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  expected = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    key = torch_key(tuple(p.key for p in path))
    if key.startswith("fc.") and arch in _TORCH_HEAD:
      key = _TORCH_HEAD[arch] + key[len("fc") :]
    expected[key] = _to_torch_shape(tuple(leaf.shape))
  return expected


def _natural(key: str):
  """Sort key that puts layer1.2 before layer1.10."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _listing(keys) -> str:
  keys = sorted(keys, key=_natural)
  shown = ", ".join(keys[:_MAX_LISTED])
  if len(keys) > _MAX_LISTED:
    shown += f", ... ({len(keys) - _MAX_LISTED} more)"
  return shown


def _split(state_dict: Mapping[str, Any]):
  """(network arrays by net key, prefixed name by net key, norm, unknown)."""
  net, names, norm, unknown = {}, {}, {}, []
  norm_names = {
      name: field for field, names_ in NORM_KEYS.items() for name in names_
  }
  for key, value in state_dict.items():
    if key in norm_names:
      norm[norm_names[key]] = (key, np.asarray(value))
      continue
    prefix = next((p for p in MODEL_PREFIXES if key.startswith(p)), None)
    if prefix is None:
      unknown.append(key)
    else:
      net[key[len(prefix) :]] = np.asarray(value)
      names[key[len(prefix) :]] = key
  return net, names, norm, unknown


def _architecture_hint(arch: str, net_keys: set[str]) -> str:
  """A sentence naming the architecture these keys most likely belong to."""
  scores = {}
  for candidate in ARCHITECTURES:
    expected = set(expected_state_dict(candidate, 10))
    scores[candidate] = len(net_keys & expected) / len(net_keys | expected)
  best = max(scores, key=scores.get)
  if best == arch or scores[best] <= scores[arch]:
    return ""
  match = "exactly" if scores[best] == 1 else f"{scores[best]:.0%} of"
  return (
      f" The keys match {match} those of {best}, not {arch}: wrong "
      f"architecture? Try --arch={best}."
  )


def convert_state_dict(
    state_dict: Mapping[str, Any], arch: str, *, dataset: str | None = None
) -> ConvertedModel:
  """Converts and validates an authors'-format state_dict.

  Args:
    state_dict: key -> array (numpy or anything np.asarray takes), with the
      `model.module.` / `norm.module.` keys of the module docstring.
    arch: one of ARCHITECTURES.
    dataset: the dataset the model classifies; default
      datasets.MODEL_DATASETS[arch].
      Its class count must equal the rows of `fc.weight` (`linear.weight`).

  Returns:
    The ConvertedModel.

  Raises:
    ValueError: naming every unknown, missing, misshapen or non-finite key,
      and the likely architecture if `arch` looks wrong.
  """
  if arch not in ARCHITECTURES:
    raise ValueError(
        f"Unknown architecture {arch!r}; the authors' "
        f"checkpoints convert to one of {ARCHITECTURES}."
    )
  dataset = dataset or datasets.MODEL_DATASETS[arch]
  if dataset not in DATASETS:
    raise ValueError(
        f"Unknown dataset {dataset!r}; expected one of " f"{tuple(DATASETS)}."
    )
  info = datasets.dataset_info(dataset)
  net, names, norm, unknown = _split(unwrap_state_dict(state_dict))
  head = _TORCH_HEAD.get(arch, "fc")
  fc = net.get(f"{head}.weight")
  num_classes = (
      fc.shape[0] if fc is not None and fc.ndim == 2 else info.num_classes
  )
  expected = expected_state_dict(arch, num_classes)
  # A BatchNorm's step counter is dropped; it is reported only when the
  # checkpoint has no such BatchNorm (else its statistics are reported).
  counters = {
      k
      for k in net
      if k.endswith(".num_batches_tracked")
      and k[: -len("num_batches_tracked")] + "running_mean" in net
  }
  unknown += [names[k] for k in net if k not in expected and k not in counters]
  missing = [MODEL_PREFIXES[0] + k for k in expected if k not in net]
  missing += [
      names_[0] for field, names_ in NORM_KEYS.items() if field not in norm
  ]
  problems = _key_problems(
      net, names, norm, expected, unknown, missing, info.input_shape[-1]
  )
  if not problems and num_classes != info.num_classes:
    problems.append(
        f"{head}.weight has {num_classes} classes but {dataset} "
        f"has {info.num_classes} (pass the right --dataset)"
    )
  if problems:
    hint = (
        _architecture_hint(arch, set(net) - counters)
        if (unknown or missing)
        else ""
    )
    raise ValueError(
        f"The checkpoint does not match the {arch} "
        f"architecture.{hint} " + "; ".join(problems) + "."
    )
  mean, std = _normalization(norm)
  return ConvertedModel(
      arch,
      _flax_variables(net, expected, head),
      mean,
      std,
      int(num_classes),
  )


def _key_problems(
    net, names, norm, expected, unknown, missing, channels: int
) -> list[str]:
  """One line per kind of problem (unknown and missing keys, shapes,
  non-finite values) of a split state_dict, offending keys listed."""
  shapes = [
      f"{names[k]} {tuple(net[k].shape)} (expected {expected[k]})"
      for k in expected
      if k in net and tuple(net[k].shape) != expected[k]
  ]
  values = [(names[k], a) for k, a in net.items() if k in expected]
  values += list(norm.values())
  non_finite = [
      key
      for key, a in values
      if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a))
  ]
  for key, a in norm.values():
    if a.size not in (1, channels):
      shapes.append(f"{key} {tuple(a.shape)} (expected {channels} values)")
  return [
      f"{label}: {_listing(keys)}"
      for label, keys in (
          ("unknown keys", unknown),
          ("missing keys", missing),
          ("shape mismatches", shapes),
          ("non-numeric or non-finite values", non_finite),
      )
      if keys
  ]


def _flax_variables(net, expected, head: str) -> dict[str, Any]:
  """{"params", "batch_stats"} of the Flax model from the validated network
  arrays (float32, HWIO kernels, the torch head renamed `fc`)."""
  variables = {"params": {}, "batch_stats": {}}
  for key in expected:
    array = np.asarray(net[key], np.float32)
    flax_key = "fc" + key[len(head) :] if key.startswith(head + ".") else key
    *parents, leaf = flax_path(flax_key, array.ndim)
    node = variables
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = _to_flax(array)
  return variables


def _normalization(norm) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel from the authors' `mu` and `log_sig`."""
  mean = np.asarray(norm["mu"][1], np.float32).reshape(-1)
  # The correctly rounded float32 exp(log_sig); torch's float32 exp is within
  # one ulp of it (identical for the CIFAR-10 and ImageNet statistics).
  std = (
      np.exp(np.asarray(norm["log_sig"][1], np.float64))
      .astype(np.float32)
      .reshape(-1)
  )
  if np.any(std <= 0):
    raise ValueError(f"{norm['log_sig'][0]} gives a zero std.")
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def check_target(
    workdir: str, *, sigma: float, dataset: str, q: int = 255
) -> None:
  """Raises ValueError unless sigma and dataset are valid and workdir holds
  no checkpoints (conversion never overwrites or mixes checkpoints)."""
  if dataset not in DATASETS:
    raise ValueError(
        f"Unknown dataset {dataset!r}; expected one of " f"{tuple(DATASETS)}."
    )
  smoothing.SmoothingSpec(sigma, q)  # Raises for a non-positive sigma or L < 1.
  directory = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
  if os.path.isdir(directory) and os.listdir(directory):
    raise ValueError(
        f"{directory} already holds checkpoints; convert into a "
        f"new --workdir."
    )


def write_checkpoint(
    converted: ConvertedModel,
    workdir: str,
    *,
    sigma: float,
    offsets_seed: int = 0,
    dataset: str | None = None,
    stability: bool = False,
    q: int = 255,
) -> dict[str, Any]:
  """Writes a converted model as step 0 of `workdir/checkpoints`.

  The smoothing metadata says DSSN at `sigma` with the authors' offsets
  template (`offsets_layout="torch"`, `numpy.random.RandomState(seed)`), so
  `checkpoints.load_classifier(workdir)` and `experiments.certify` (with
  `--config.offsets_layout=torch`) certify it as the authors did.

  Args:
    converted: from `convert_state_dict`.
    workdir: a new directory, or one without checkpoints.
    sigma: the sigma the model was trained with (the checkpoint's name).
    offsets_seed: seed of the offsets template (the authors used 0).
    dataset: default datasets.MODEL_DATASETS[converted.arch].
    stability: whether the model was trained with stability training
      (recorded only, for the analysis tables).
    q: input quantization.

  Returns:
    The metadata written.
  """
  dataset = dataset or datasets.MODEL_DATASETS[converted.arch]
  check_target(workdir, sigma=sigma, dataset=dataset, q=q)
  config = ml_collections.ConfigDict(
      {
          "noise": "dssn",
          "sigma": float(sigma),
          "q": q,
          "offsets_seed": int(offsets_seed),
          "offsets_layout": "torch",
          "stability": bool(stability),
          "stability_gamma": 6.0 if stability else 0.0,
          "model": converted.arch,
          "dataset": dataset,
          "compute_dtype": "float32",
      }
  )
  metadata = checkpoints.smoothing_metadata(
      config,
      num_classes=converted.num_classes,
      mean=converted.mean,
      std=converted.std,
  )
  checkpointer = checkpoints.Checkpointer(workdir)
  checkpointer.save(0, converted.variables, metadata)
  checkpointer.close()
  return metadata


def convert_checkpoint(
    path: str,
    arch: str,
    workdir: str,
    *,
    sigma: float,
    offsets_seed: int = 0,
    dataset: str | None = None,
    stability: bool = False,
) -> dict[str, Any]:
  """Reads, validates and writes: the whole of experiments/convert_torch.py.

  Returns:
    The metadata written into `workdir`.
  """
  if arch not in ARCHITECTURES:
    raise ValueError(
        f"Unknown architecture {arch!r}; the authors' "
        f"checkpoints convert to one of {ARCHITECTURES}."
    )
  check_target(
      workdir, sigma=sigma, dataset=dataset or datasets.MODEL_DATASETS[arch]
  )
  converted = convert_state_dict(
      load_torch_checkpoint(path), arch, dataset=dataset
  )
  return write_checkpoint(
      converted,
      workdir,
      sigma=sigma,
      offsets_seed=offsets_seed,
      dataset=dataset,
      stability=stability,
  )
