"""Tests for dssn_jax.training.convert and experiments/convert_torch.py.

PyTorch models with the authors' key layout (their WRN-40-2, torchvision's
ResNet-50, Idelbayev's option-A ResNet-110, all wrapped as `model.module.` +
`norm.module.{mu,log_sig}`) get random weights and perturbed BatchNorm
statistics, are saved, converted, and must give our logits and our exact
DSSN counts. torch is imported directly: CI installs it, and a missing torch
must fail, not skip.
"""

import copy
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import torch_models
import dssn_jax
from dssn_jax.models import layers
from dssn_jax.training import checkpoints
from dssn_jax.training import convert
from tests import torch_reference

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SIGMA = 0.25  # L = 220 levels.
_CIFAR_MU = (0.4914, 0.4822, 0.4465)
_CIFAR_SIG = (0.2023, 0.1994, 0.2010)


# The authors' PyTorch networks (key layout as in their state_dicts): the
# WRN-40-2 of the PyTorch peer benchmark, its `Authors` wrapper and
# `randomize` in benchmarks/torch_models.py, the others in
# tests/torch_reference.py.


def _grid_images(n, size, seed):
  """(n, size, size, 3) float32 images on the 1/255 grid."""
  rng = np.random.RandomState(seed)
  return (rng.randint(0, 256, (n, size, size, 3)) / 255).astype(np.float32)


def _torch_logits(model, x):
  """Logits of the NCHW torch model for NHWC numpy inputs."""
  with torch.no_grad():
    return model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


def _assert_logits_match(ours, model, x):
  """Our logits equal torch's to 1e-4 of the logit scale, and are as close
  to the float64 logits of the same network as torch's float32 ones are."""
  ours = np.asarray(ours)
  theirs = _torch_logits(model, x)
  exact = _torch_logits(copy.deepcopy(model).double(), x.astype(np.float64))
  scale = np.abs(theirs).max()
  ours_error = np.abs(ours - exact).max()
  torch_error = np.abs(theirs - exact).max()
  print(
      f"logit scale {scale:.3g}: max |ours - torch| "
      f"{np.abs(ours - theirs).max():.3g}, float32 errors: ours "
      f"{ours_error:.3g}, torch {torch_error:.3g}"
  )
  assert scale > 0.1  # Not a degenerate network.
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
  # Centred logits cancel (they are differences of terms ~50x larger), so
  # the 1e-4 above is float32 rounding; this bounds ours by torch's own.
  assert ours_error <= 4 * torch_error + 1e-6 * scale


# ----------------------------------------------------------------------------
# Fixtures: each model is built, saved and converted once per module.


@pytest.fixture(scope="module")
def torch_wrn(tmp_path_factory):
  """(torch model, path of its authors'-format checkpoint)."""
  torch.manual_seed(0)  # Construction draws the weights: seed it first.
  model = torch_models.randomize(
      torch_models.Authors(torch_models.WideResNet(), _CIFAR_MU, _CIFAR_SIG),
      32,
      0,
  )
  path = str(tmp_path_factory.mktemp("torch") / "wrn_40_2.pth")
  torch.save(model.state_dict(), path)
  return model, path


@pytest.fixture(scope="module")
def wrn_classifier(torch_wrn, tmp_path_factory):
  """The WRN-40-2 converted by the CLI (in a subprocess), restored."""
  workdir = str(tmp_path_factory.mktemp("converted") / "wrn")
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "experiments.convert_torch",
          f"--checkpoint={torch_wrn[1]}",
          "--arch=wrn_40_2",
          f"--sigma={_SIGMA}",
          f"--workdir={workdir}",
      ],
      cwd=_REPO,
      capture_output=True,
      text=True,
      check=False,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "L=220" in result.stdout
  return checkpoints.load_classifier(workdir)


@pytest.fixture(scope="module")
def torch_resnet50(tmp_path_factory):
  torch.manual_seed(1)
  model = torch_models.randomize(
      torch_models.Authors(
          torch_reference.ResNet50(),
          (0.485, 0.456, 0.406),
          (0.229, 0.224, 0.225),
      ),
      64,
      1,
  )
  path = str(tmp_path_factory.mktemp("torch") / "resnet50.pth")
  # Wrapped as some training scripts save it: {"state_dict": ..., ...}.
  torch.save({"state_dict": model.state_dict(), "epoch": 30}, path)
  return model, path


# ----------------------------------------------------------------------------
# Tests.


def test_bn_epsilon_matches_pytorch():
  assert nn.BatchNorm2d(4).eps == convert.TORCH_BN_EPSILON == layers.BN_EPSILON


@pytest.mark.parametrize(
    "key,ndim,path",
    [
        ("conv1.weight", 4, ("params", "conv1", "kernel")),
        (
            "block1.layer.0.bn1.weight",
            1,
            ("params", "block1_layer_0", "bn1", "scale"),
        ),
        (
            "block3.layer.5.convShortcut.weight",
            4,
            ("params", "block3_layer_5", "convShortcut", "kernel"),
        ),
        (
            "layer2.0.downsample.1.running_var",
            1,
            ("batch_stats", "layer2_0", "downsample_1", "var"),
        ),
        ("fc.weight", 2, ("params", "fc", "kernel")),
        ("fc.bias", 1, ("params", "fc", "bias")),
    ],
)
def test_key_mapping(key, ndim, path):
  assert convert.flax_path(key, ndim) == path
  assert convert.torch_key(path) == key


@pytest.mark.slow
def test_wrn_logits_match_pytorch(torch_wrn, wrn_classifier):
  x = _grid_images(2, 32, seed=10)
  ours = jax.jit(wrn_classifier.apply_fn)(wrn_classifier.variables, x)
  _assert_logits_match(ours, torch_wrn[0], x)


@pytest.mark.slow
def test_resnet50_logits_match_pytorch(torch_resnet50, tmp_path):
  # Through the CLI's library function, into a workdir, then restored. 32x32
  # inputs (instead of 224x224) keep the test fast: both networks end in a
  # global average pool, so any size exercises every layer (the last stage
  # at 1x1, where the earlier stages check every tap of the same layout
  # conversion). At 64x64 the first call took 30 s more: XLA:CPU's default
  # ynn fusion option builds this program's fused kernels at its first run
  # (docs/performance.md).
  metadata = convert.convert_checkpoint(
      torch_resnet50[1], "resnet50", str(tmp_path / "r50"), sigma=0.5
  )
  assert metadata["dataset"] == "imagenet2012"
  assert metadata["input_shape"] == [224, 224, 3]
  assert metadata["num_classes"] == 1000
  classifier = checkpoints.load_classifier(str(tmp_path / "r50"))
  x = _grid_images(2, 32, seed=11)
  ours = jax.jit(classifier.apply_fn)(classifier.variables, x)
  _assert_logits_match(ours, torch_resnet50[0], x)


@pytest.mark.slow
def test_converted_metadata_and_offsets(torch_wrn, wrn_classifier):
  meta = wrn_classifier.metadata
  assert (
      meta["noise"],
      meta["sigma"],
      meta["levels"],
      meta["offsets_seed"],
      meta["offsets_layout"],
      meta["model"],
      meta["dataset"],
  ) == ("dssn", _SIGMA, 220, 0, "torch", "wrn_40_2", "cifar10")
  norm = torch_wrn[0].norm.module
  np.testing.assert_array_equal(
      np.float32(meta["mean"]), norm.mu.detach().numpy().reshape(-1)
  )
  np.testing.assert_array_equal(
      np.float32(meta["std"]),
      torch.exp(norm.log_sig).detach().numpy().reshape(-1),
  )
  # The authors' template: RandomState(0).randint(L, size=C*H*W) as (C, H, W).
  template = np.random.RandomState(0).randint(220, size=3 * 32 * 32)
  np.testing.assert_array_equal(
      np.asarray(wrn_classifier.offsets),
      template.reshape(3, 32, 32).transpose(1, 2, 0),
  )


def _torch_dssn_votes(model, x, v, levels, q=255):
  """Per-sample torch predictions and top-two logit gaps (docs/design.md).

  Args:
    model: the torch classifier.
    x: (3, H, W) float64 grid image.
    v: (3, H, W) int offsets.
    levels: L.
    q: quantization.

  Returns:
    (predictions (L,), relative gap between the top two logits (L,)).
  """
  k = torch.arange(levels, dtype=torch.float64).reshape(-1, 1, 1, 1)
  s = (torch.remainder(v + k, levels) + 0.5) / q
  t = torch.ceil((x - s) * q / levels) * levels / q + s
  xt = (torch.clamp(t, max=1.0) + torch.clamp(t - levels / q, min=0.0)) / 2
  with torch.no_grad():
    logits = model(xt.float())
  top2 = torch.topk(logits, 2, dim=1).values
  gap = (top2[:, 0] - top2[:, 1]) / logits.abs().max(dim=1).values
  return torch.argmax(logits, dim=1).numpy(), gap.numpy()


@pytest.mark.slow
def test_dssn_counts_match_pytorch(torch_wrn, wrn_classifier):
  spec = wrn_classifier.spec
  assert spec.levels == 220
  x = _grid_images(3, 32, seed=12)
  counts = np.asarray(
      dssn_jax.dssn_counts(
          wrn_classifier.apply_fn,
          x,
          wrn_classifier.offsets,
          spec,
          params=wrn_classifier.variables,
      )
  )
  v = torch.from_numpy(
      np.random.RandomState(0).randint(220, size=3 * 32 * 32).reshape(3, 32, 32)
  ).double()
  qualified = 0
  for i in range(len(x)):
    image = torch.from_numpy(x[i].transpose(2, 0, 1)).double()
    preds, gaps = _torch_dssn_votes(torch_wrn[0], image, v, spec.levels)
    theirs = np.bincount(preds, minlength=10)
    print(
        f"image {i}: ours {counts[i]}, torch {theirs}, "
        f"min top-two gap {gaps.min():.2e}"
    )
    if gaps.min() > 1e-4:
      qualified += 1
      np.testing.assert_array_equal(counts[i], theirs)
  assert qualified >= 2
  assert (counts > 0).sum() > len(x)  # The votes are not all for one class.


def _state_dict(path):
  return {
      k: v.clone()
      for k, v in torch.load(
          path, map_location="cpu", weights_only=True
      ).items()
  }


def _edit_unknown(sd):
  sd["model.module.block1.layer.0.extra.weight"] = torch.zeros(3)
  return ["model.module.block1.layer.0.extra.weight"]


def _edit_missing(sd):
  del sd["model.module.block2.layer.3.bn2.running_var"]
  del sd["norm.module.log_sig"]
  return ["model.module.block2.layer.3.bn2.running_var", "norm.module.log_sig"]


def _edit_shape(sd):
  sd["model.module.block3.layer.0.conv1.weight"] = torch.zeros(128, 64, 1, 3)
  return [
      "model.module.block3.layer.0.conv1.weight (128, 64, 1, 3) "
      "(expected (128, 64, 3, 3))"
  ]


def _edit_nan(sd):
  sd["model.module.fc.bias"][3] = float("nan")
  return ["model.module.fc.bias"]


@pytest.mark.parametrize(
    "edit", [_edit_unknown, _edit_missing, _edit_shape, _edit_nan]
)
@pytest.mark.slow
def test_invalid_checkpoint_names_keys_and_writes_nothing(
    torch_wrn, tmp_path, edit
):
  sd = _state_dict(torch_wrn[1])
  offending = edit(sd)
  path = str(tmp_path / "bad.pth")
  torch.save(sd, path)
  workdir = str(tmp_path / "workdir")
  with pytest.raises(ValueError) as error:
    convert.convert_checkpoint(path, "wrn_40_2", workdir, sigma=_SIGMA)
  for key in offending:
    assert key in str(error.value)
  assert not os.path.exists(workdir)


@pytest.mark.slow
def test_wrong_arch_is_named(torch_wrn, tmp_path):
  workdir = str(tmp_path / "workdir")
  with pytest.raises(ValueError, match="--arch=wrn_40_2") as error:
    convert.convert_checkpoint(torch_wrn[1], "resnet110", workdir, sigma=_SIGMA)
  message = str(error.value)
  assert "unknown keys: model.module.block1.layer.0.bn1.bias" in message
  assert "model.module.layer1.0.bn1.weight" in message  # Missing.
  assert "num_batches_tracked" not in message
  assert not os.path.exists(workdir)


def test_option_a_resnet110_is_named_and_converts():
  shapes = convert.expected_state_dict("resnet110_zero_pad", 10)
  assert "linear.weight" in shapes and not any(
      "downsample" in k for k in shapes
  )
  sd = {"model.module." + k: np.ones(s, np.float32) for k, s in shapes.items()}
  sd.update(
      {
          "norm.module.mu": np.zeros((3, 1, 1), np.float32),
          "norm.module.log_sig": np.zeros((3, 1, 1), np.float32),
      }
  )
  with pytest.raises(ValueError, match="Try --arch=resnet110_zero_pad"):
    convert.convert_state_dict(sd, "resnet110")
  converted = convert.convert_state_dict(sd, "resnet110_zero_pad")
  assert converted.num_classes == 10
  assert converted.variables["params"]["fc"]["kernel"].shape == (64, 10)


@pytest.mark.slow
def test_option_a_resnet110_logits_match_pytorch(tmp_path):
  torch.manual_seed(2)
  model = torch_models.randomize(
      torch_models.Authors(
          torch_reference.OptionAResNet110(), _CIFAR_MU, _CIFAR_SIG
      ),
      32,
      2,
  )
  path = str(tmp_path / "resnet110_option_a.pth")
  torch.save(model.state_dict(), path)
  metadata = convert.convert_checkpoint(
      path, "resnet110_zero_pad", str(tmp_path / "r110"), sigma=0.5
  )
  assert (metadata["model"], metadata["dataset"]) == (
      "resnet110_zero_pad",
      "cifar10",
  )
  classifier = checkpoints.load_classifier(str(tmp_path / "r110"))
  x = _grid_images(2, 32, seed=12)
  ours = jax.jit(classifier.apply_fn)(classifier.variables, x)
  _assert_logits_match(ours, model, x)


@pytest.mark.slow
def test_existing_checkpoint_is_not_overwritten(torch_wrn, tmp_path):
  workdir = str(tmp_path / "w")
  converted = convert.convert_state_dict(
      convert.load_torch_checkpoint(torch_wrn[1]), "wrn_40_2"
  )
  convert.write_checkpoint(converted, workdir, sigma=_SIGMA)
  with pytest.raises(ValueError, match="already holds checkpoints"):
    convert.convert_checkpoint(torch_wrn[1], "wrn_40_2", workdir, sigma=1.0)
  assert checkpoints.load_classifier(workdir).metadata["sigma"] == _SIGMA


def test_bad_flags_are_refused_before_reading(tmp_path):
  missing = str(tmp_path / "none.pth")
  with pytest.raises(ValueError, match="architecture"):
    convert.convert_checkpoint(missing, "wrn_28_10", str(tmp_path), sigma=0.5)
  with pytest.raises(ValueError, match="sigma"):
    convert.convert_checkpoint(missing, "wrn_40_2", str(tmp_path), sigma=0.0)
  with pytest.raises(FileNotFoundError):
    convert.convert_checkpoint(missing, "wrn_40_2", str(tmp_path), sigma=0.5)
