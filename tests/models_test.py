"""Tests for dssn_jax.models: shapes, sizes, PyTorch layout and BatchNorm."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dssn_jax import models
from dssn_jax.models import layers

_INPUT_SHAPES = {
    "small_cnn": (28, 28, 1),
    "wrn_40_2": (32, 32, 3),
    "resnet110": (32, 32, 3),
    "resnet110_zero_pad": (32, 32, 3),
    "resnet50": (64, 64, 3),  # Small input: the test is about shapes.
}
_NUM_CLASSES = {
    "small_cnn": 10,
    "wrn_40_2": 10,
    "resnet110": 10,
    "resnet110_zero_pad": 10,
    "resnet50": 1000,
}

# Parameter counts of the reference architectures (PyTorch `parameters()`,
# which like Flax `params` excludes BatchNorm running statistics).
_PARAM_COUNTS = {
    "small_cnn": 391_146,
    "wrn_40_2": 2_243_546,  # xternalz WideResNet(40, 10, widen_factor=2).
    "resnet110": 1_730_714,  # Cohen et al. resnet110.
    "resnet110_zero_pad": 1_727_962,  # Idelbayev's option-A resnet110.
    "resnet50": 25_557_032,  # torchvision resnet50.
}


def _create(name, dtype=jnp.float32):
  channels = _INPUT_SHAPES[name][-1]
  return models.create_model(
      name,
      num_classes=_NUM_CLASSES[name],
      mean=(0.5,) * channels,
      std=(0.25,) * channels,
      dtype=dtype,
  )


def _variable_shapes(name):
  if name == "resnet110_zero_pad":
    model = models.CifarResNet(
        num_classes=10, mean=(0.5,), std=(0.25,), shortcut="zero_pad"
    )
    name = "resnet110"
  else:
    model = _create(name)
  x = jnp.zeros((1,) + _INPUT_SHAPES[name])
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


def _random_variables(model, x, seed=0):
  """Random variables of the right structure, without running `model.init`.

  Random params and plausible running statistics (var > 0). Skipping the
  initializers (slow to compile on CPU) keeps this file fast.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    if path[-1].key == "var":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    scale = 1.0 if path[-1].key == "scale" else 0.3
    return jnp.asarray(rng.normal(0.0, scale, leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model, variables, x, **kwargs):
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, x)


def _images(shape, seed=0):
  return jnp.asarray(
      np.random.RandomState(seed).randint(0, 256, shape) / 255, jnp.float32
  )


# Small variants of each architecture for the behavioural tests.
_SMALL_MODELS = {
    "small_cnn": (
        lambda **kw: models.SmallCNN(num_classes=10, **kw),
        (28, 28, 1),
    ),
    "wrn_10_1": (
        lambda **kw: models.WideResNet(
            num_classes=10, depth=10, widen_factor=1, **kw
        ),
        (32, 32, 3),
    ),
    "resnet8": (
        lambda **kw: models.CifarResNet(num_classes=10, depth=8, **kw),
        (32, 32, 3),
    ),
    "resnet_1111": (
        lambda **kw: models.ResNet(
            num_classes=7, stage_sizes=(1, 1, 1, 1), **kw
        ),
        (32, 32, 3),
    ),
}


def test_model_names():
  assert models.MODEL_NAMES == (
      "small_cnn",
      "wrn_40_2",
      "resnet110",
      "resnet110_zero_pad",
      "resnet50",
  )


def test_unknown_name_lists_known_names():
  with pytest.raises(ValueError, match="wrn_40_2.*resnet50"):
    models.create_model("wrn_28_10", num_classes=10, mean=(0.5,), std=(1.0,))


def test_invalid_std_and_channels():
  with pytest.raises(ValueError, match="std"):
    models.create_model("small_cnn", num_classes=10, mean=(0.5,), std=(0.0,))
  model = models.create_model(
      "small_cnn", num_classes=10, mean=(0.5, 0.5), std=(1.0, 1.0)
  )
  with pytest.raises(ValueError, match="mean has 2 entries"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.parametrize(
    "name,dtype",
    [
        *((name, jnp.float32) for name in models.MODEL_NAMES),
        ("wrn_40_2", jnp.bfloat16),
        ("resnet50", jnp.bfloat16),
    ],
)
def test_output_shape_and_dtype(name, dtype):
  # Shapes only (jax.eval_shape traces without compiling, which keeps this
  # file fast); the small-variant tests below run the same code numerically.
  model = _create(name, dtype=dtype)
  x = jnp.zeros((2,) + _INPUT_SHAPES[name])

  def init_and_apply(key):
    variables = model.init(key, x[:1])
    return (
        variables,
        model.apply(variables, x, train=False),
        model.apply(variables, x, train=True, mutable=["batch_stats"]),
    )

  variables, logits, (train_logits, updates) = jax.eval_shape(
      init_and_apply, jax.random.key(0)
  )
  assert set(variables) == {"params", "batch_stats"}
  for out in (logits, train_logits):
    assert out.shape == (2, _NUM_CLASSES[name])
    assert out.dtype == jnp.float32
  for leaf in jax.tree.leaves((variables, updates)):
    assert leaf.dtype == jnp.float32  # Params and statistics stay float32.


def test_resnet50_full_resolution_shape():
  model = _create("resnet50")
  x = jnp.zeros((1, 224, 224, 3))
  logits = jax.eval_shape(
      lambda k: model.apply(model.init(k, x), x), jax.random.key(0)
  )
  assert logits.shape == (1, 1000)


def test_initialization():
  model = _create("small_cnn")
  x = _images((2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x[:1])
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["bn2"]["scale"], 1.0)
  np.testing.assert_array_equal(params["bn2"]["bias"], 0.0)
  np.testing.assert_array_equal(stats["bn2"]["mean"], 0.0)
  np.testing.assert_array_equal(stats["bn2"]["var"], 1.0)
  # He normal with fan-out, as PyTorch's reference initialization.
  std = np.std(params["conv3"]["kernel"])
  np.testing.assert_allclose(std, np.sqrt(2 / (3 * 3 * 128)), rtol=0.05)
  logits = _apply(model, variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_parameter_count(name):
  params = _variable_shapes(name)["params"]
  assert sum(p.size for p in jax.tree.leaves(params)) == _PARAM_COUNTS[name]


def test_parameter_count_resnet110_zero_pad():
  # Idelbayev's option-A ResNet-110 ("1.7M"): no downsample parameters.
  params = _variable_shapes("resnet110_zero_pad")["params"]
  assert sum(p.size for p in jax.tree.leaves(params)) == 1_727_962


def _torch_wrn_state_dict(depth=40, widen_factor=2, num_classes=10):
  """Key -> shape of the authors' PyTorch WideResNet state_dict."""
  shapes = {"conv1.weight": (16, 3, 3, 3)}

  def bn(prefix, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}.{p}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()

  n = (depth - 4) // 6
  cin = 16
  for g, width in enumerate((16, 32, 64), start=1):
    cout = width * widen_factor
    for i in range(n):
      c = cin if i == 0 else cout
      prefix = f"block{g}.layer.{i}"
      bn(f"{prefix}.bn1", c)
      shapes[f"{prefix}.conv1.weight"] = (cout, c, 3, 3)
      bn(f"{prefix}.bn2", cout)
      shapes[f"{prefix}.conv2.weight"] = (cout, cout, 3, 3)
      if c != cout:
        shapes[f"{prefix}.convShortcut.weight"] = (cout, c, 1, 1)
    cin = cout
  bn("bn1", cin)
  shapes["fc.weight"] = (num_classes, cin)
  shapes["fc.bias"] = (num_classes,)
  return shapes


def _torch_resnet_state_dict(
    block, stage_sizes, widths, stem, num_classes, projection=True
):
  """Key -> shape of a torchvision / Cohen et al. / Idelbayev ResNet."""
  shapes = {}

  def bn(prefix, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}.{p}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()

  cin, kernel = stem
  shapes["conv1.weight"] = (cin, 3, kernel, kernel)
  bn("bn1", cin)
  expansion = 4 if block == "bottleneck" else 1
  for s, (n, width) in enumerate(zip(stage_sizes, widths), start=1):
    for i in range(n):
      p = f"layer{s}.{i}"
      if block == "bottleneck":
        convs = [(width, cin, 1), (width, width, 3), (4 * width, width, 1)]
      else:
        convs = [(width, cin, 3), (width, width, 3)]
      for j, (o, c, k) in enumerate(convs, start=1):
        shapes[f"{p}.conv{j}.weight"] = (o, c, k, k)
        bn(f"{p}.bn{j}", o)
      stride = 2 if i == 0 and s > 1 else 1
      if projection and (stride != 1 or cin != width * expansion):
        shapes[f"{p}.downsample.0.weight"] = (width * expansion, cin, 1, 1)
        bn(f"{p}.downsample.1", width * expansion)
      cin = width * expansion
  fc = "fc" if projection else "linear"
  shapes[f"{fc}.weight"] = (num_classes, cin)
  shapes[f"{fc}.bias"] = (num_classes,)
  return shapes


_TORCH_STATE_DICTS = {
    "wrn_40_2": lambda: _torch_wrn_state_dict(),
    "resnet110": lambda: _torch_resnet_state_dict(
        "basic", (18, 18, 18), (16, 32, 64), (16, 3), 10
    ),
    "resnet50": lambda: _torch_resnet_state_dict(
        "bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), (64, 7), 1000
    ),
    "resnet110_zero_pad": lambda: _torch_resnet_state_dict(
        "basic", (18, 18, 18), (16, 32, 64), (16, 3), 10, projection=False
    ),
}


def _flax_path(torch_key, ndim):
  """The module docstrings' PyTorch key -> Flax variable path mapping."""
  *modules, leaf = torch_key.split(".")
  if modules == ["linear"]:  # Idelbayev's name for the classifier.
    modules = ["fc"]
  numeric = [i for i, m in enumerate(modules) if m.isdigit()]
  if numeric:
    cut = numeric[0] + 1
    modules = ["_".join(modules[:cut]), "_".join(modules[cut:])]
  if leaf in ("running_mean", "running_var"):
    return ("batch_stats", *modules, leaf[len("running_") :])
  if leaf == "weight":
    leaf = "kernel" if ndim > 1 else "scale"
  return ("params", *modules, leaf)


def _torch_shape_in_flax(shape):
  if len(shape) == 4:  # (O, I, kh, kw) -> (kh, kw, I, O)
    return (shape[2], shape[3], shape[1], shape[0])
  return tuple(reversed(shape))  # Linear (out, in) -> (in, out).


@pytest.mark.parametrize("name", sorted(_TORCH_STATE_DICTS))
def test_variables_mirror_pytorch_state_dict(name):
  expected = {}
  for key, shape in _TORCH_STATE_DICTS[name]().items():
    if key.endswith("num_batches_tracked"):
      continue
    expected[_flax_path(key, len(shape))] = _torch_shape_in_flax(shape)
  flat = jax.tree_util.tree_flatten_with_path(_variable_shapes(name))[0]
  actual = {tuple(k.key for k in path): leaf.shape for path, leaf in flat}
  assert actual == expected


def _conv_reference(x, kernel, stride, pad):
  """PyTorch Conv2d(padding=pad, stride=stride) semantics, NHWC numpy."""
  kh, kw = kernel.shape[:2]
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h = (x.shape[1] - kh) // stride + 1
  w = (x.shape[2] - kw) // stride + 1
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      patch = x[
          :,
          i : i + stride * (h - 1) + 1 : stride,
          j : j + stride * (w - 1) + 1 : stride,
      ]
      out = out + patch @ kernel[i, j]
  return out


def _bn_reference(x, params, stats):
  return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params[
      "scale"
  ] + params["bias"]


def _relu(x):
  return np.maximum(x, 0.0)


def _wide_block_reference(x, v, stride):
  """The PyTorch WideResNet BasicBlock forward (eval mode)."""
  p, s = v["params"], v["batch_stats"]
  out = _relu(_bn_reference(x, p["bn1"], s["bn1"]))
  y = _conv_reference(out, p["conv1"]["kernel"], stride, 1)
  y = _relu(_bn_reference(y, p["bn2"], s["bn2"]))
  y = _conv_reference(y, p["conv2"]["kernel"], 1, 1)
  if "convShortcut" in p:
    return _conv_reference(out, p["convShortcut"]["kernel"], stride, 0) + y
  return x + y


def _basic_block_reference(x, v, stride, zero_pad=False):
  """Cohen et al.'s (or Idelbayev's option A) BasicBlock forward (eval)."""
  p, s = v["params"], v["batch_stats"]
  y = _relu(
      _bn_reference(
          _conv_reference(x, p["conv1"]["kernel"], stride, 1),
          p["bn1"],
          s["bn1"],
      )
  )
  y = _bn_reference(
      _conv_reference(y, p["conv2"]["kernel"], 1, 1), p["bn2"], s["bn2"]
  )
  if "downsample_0" in p:
    x = _bn_reference(
        _conv_reference(x, p["downsample_0"]["kernel"], stride, 0),
        p["downsample_1"],
        s["downsample_1"],
    )
  elif zero_pad and y.shape != x.shape:
    pad = y.shape[-1] // 4
    x = np.pad(x[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (pad, pad)))
  return _relu(x + y)


def _bottleneck_reference(x, v, stride):
  """torchvision's Bottleneck forward (eval mode)."""
  p, s = v["params"], v["batch_stats"]
  y = x
  for j, (st, pad) in enumerate(((1, 0), (stride, 1), (1, 0)), start=1):
    y = _bn_reference(
        _conv_reference(y, p[f"conv{j}"]["kernel"], st, pad),
        p[f"bn{j}"],
        s[f"bn{j}"],
    )
    y = _relu(y) if j < 3 else y
  if "downsample_0" in p:
    x = _bn_reference(
        _conv_reference(x, p["downsample_0"]["kernel"], stride, 0),
        p["downsample_1"],
        s["downsample_1"],
    )
  return _relu(x + y)


@pytest.mark.parametrize(
    "block,reference,cin,features,stride",
    [
        (models.WideBasicBlock, _wide_block_reference, 4, 8, 2),
        (models.WideBasicBlock, _wide_block_reference, 6, 6, 1),
        (models.BasicBlock, _basic_block_reference, 4, 8, 2),
        (models.BasicBlock, _basic_block_reference, 6, 6, 1),
        (
            functools.partial(models.BasicBlock, shortcut="zero_pad"),
            functools.partial(_basic_block_reference, zero_pad=True),
            4,
            8,
            2,
        ),
        (models.Bottleneck, _bottleneck_reference, 4, 2, 2),
        (models.Bottleneck, _bottleneck_reference, 8, 2, 1),
    ],
)
def test_block_matches_pytorch_forward(block, reference, cin, features, stride):
  # Even spatial size with stride 2 is where 'SAME' padding would differ.
  x = np.random.RandomState(1).normal(size=(2, 8, 8, cin)).astype(np.float32)
  module = block(features, stride)
  variables = _random_variables(module, x)
  has_projection = "convShortcut" in variables["params"] or (
      "downsample_0" in variables["params"]
  )
  zero_pad = getattr(module, "shortcut", "") == "zero_pad"
  expansion = 4 if block is models.Bottleneck else 1
  assert has_projection == (
      not zero_pad and (stride != 1 or cin != features * expansion)
  )
  expected = reference(x, jax.tree.map(np.asarray, variables), stride)
  actual = _apply(module, variables, jnp.asarray(x))
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_resnet50_stem_matches_pytorch_padding():
  # conv1 7x7/2 pad 3 and max pool 3x3/2 pad 1 (padding with -inf).
  x = np.random.RandomState(2).uniform(size=(1, 16, 16, 3)).astype(np.float32)
  kernel = np.random.RandomState(3).normal(size=(7, 7, 3, 4)).astype(np.float32)
  y = _conv_reference(x, kernel, 2, 3)
  yp = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  pooled = np.max(
      [yp[:, i : i + 7 : 2, j : j + 7 : 2] for i in range(3) for j in range(3)],
      axis=0,
  )
  conv = layers.conv(4, 7, 2, 3, jnp.float32, "conv1")
  actual = conv.apply({"params": {"kernel": kernel}}, x)
  np.testing.assert_allclose(actual, y, rtol=1e-4, atol=1e-4)
  actual = nn.max_pool(actual, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_allclose(actual, pooled, rtol=1e-4, atol=1e-4)


def _small_model(name, **kwargs):
  make, shape = _SMALL_MODELS[name]
  kwargs.setdefault("mean", (0.5,) * shape[-1])
  kwargs.setdefault("std", (0.25,) * shape[-1])
  return make(**kwargs), shape


@pytest.mark.parametrize("name", sorted(_SMALL_MODELS))
def test_normalization_inside_model(name):
  _, shape = _SMALL_MODELS[name]
  mean = (0.3, 0.45, 0.6)[: shape[-1]]
  std = (0.2, 0.25, 0.3)[: shape[-1]]
  model, _ = _small_model(name, mean=mean, std=std)
  identity, _ = _small_model(
      name, mean=(0.0,) * shape[-1], std=(1.0,) * shape[-1]
  )
  x = _images((2,) + shape)
  variables = _random_variables(model, x)
  normalized = (x - jnp.asarray(mean)) / jnp.asarray(std)
  logits = _apply(model, variables, x)
  assert logits.shape == (2, model.num_classes)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  np.testing.assert_allclose(
      logits, _apply(identity, variables, normalized), rtol=1e-4, atol=1e-4
  )


@pytest.mark.parametrize("name", sorted(_SMALL_MODELS))
def test_eval_is_deterministic_and_keeps_batch_stats(name):
  model, shape = _small_model(name)
  x = _images((3,) + shape)
  variables = _random_variables(model, x)
  logits, updates = _apply(
      model, variables, x, train=False, mutable=["batch_stats"]
  )
  np.testing.assert_array_equal(logits, _apply(model, variables, x))
  jax.tree.map(
      np.testing.assert_array_equal,
      updates["batch_stats"],
      variables["batch_stats"],
  )
  # Running statistics: an example's logits do not depend on its batch.
  np.testing.assert_allclose(
      _apply(model, variables, x[:1]), logits[:1], rtol=1e-4, atol=1e-4
  )


@pytest.mark.parametrize("name", sorted(_SMALL_MODELS))
def test_train_mode_updates_batch_stats(name):
  model, shape = _small_model(name)
  x = _images((4,) + shape)
  variables = _random_variables(model, x)
  logits, updates = _apply(
      model, variables, x, train=True, mutable=["batch_stats"]
  )
  assert logits.shape == (4, model.num_classes)
  assert logits.dtype == jnp.float32
  changed = jax.tree.map(
      lambda a, b: not np.allclose(a, b),
      updates["batch_stats"],
      variables["batch_stats"],
  )
  assert all(jax.tree.leaves(changed))
  with pytest.raises(Exception, match="batch_stats"):
    jax.eval_shape(functools.partial(model.apply, train=True), variables, x)


def test_batch_norm_momentum_matches_pytorch():
  # running = 0.9 * running + 0.1 * batch statistic (PyTorch momentum=0.1);
  # Flax's running variance uses the biased batch variance.
  model = models.SmallCNN(num_classes=10, mean=(0.0,), std=(1.0,))
  x = _images((8, 28, 28, 1))
  variables = _random_variables(model, x)
  _, updates = _apply(model, variables, x, train=True, mutable=["batch_stats"])
  h = layers.conv(32, 3, 1, 1, jnp.float32, "conv1").apply(
      {"params": variables["params"]["conv1"]}, x
  )
  old = variables["batch_stats"]["bn1"]
  new = updates["batch_stats"]["bn1"]
  np.testing.assert_allclose(
      new["mean"],
      0.9 * old["mean"] + 0.1 * h.mean(axis=(0, 1, 2)),
      rtol=1e-4,
      atol=1e-5,
  )
  np.testing.assert_allclose(
      new["var"],
      0.9 * old["var"] + 0.1 * h.var(axis=(0, 1, 2)),
      rtol=1e-4,
      atol=1e-5,
  )


@pytest.mark.parametrize("name", ["small_cnn", "wrn_10_1"])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  model, shape = _small_model(name, dtype=jnp.bfloat16)
  reference, _ = _small_model(name)
  x = _images((2,) + shape)
  variables = _random_variables(reference, x)
  for leaf in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0), x)):
    assert leaf.dtype == jnp.float32
  logits = _apply(model, variables, x)
  assert logits.dtype == jnp.float32
  expected = _apply(reference, variables, x)
  np.testing.assert_allclose(
      logits, expected, rtol=0.1, atol=0.1 * np.abs(expected).max()
  )
  _, updates = _apply(model, variables, x, train=True, mutable=["batch_stats"])
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.float32


def test_models_are_hashable():
  # Equal configurations are equal and hashable (static arguments of jit).
  assert hash(_create("wrn_40_2")) == hash(_create("wrn_40_2"))
  assert _create("wrn_40_2") == _create("wrn_40_2")
