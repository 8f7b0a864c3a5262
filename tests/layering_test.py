"""The package's layers, enforced on its import graph (docs/design.md,
section 5): a module imports only from its own layer or lower ones,
TensorFlow only inside dssn_jax/data/, and the core is pure."""

import ast
import pathlib

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "dssn_jax"
# Lowest first. "" is the package's own __init__ (the public API) and
# "jobs" the top-level module that chains whole jobs.
LAYERS = (
    "core",
    "runtime",
    "data",
    "models",
    "training",
    "runs",
    "reports",
    "jobs",
)
# Third-party packages that a layer may not import, and why.
FORBIDDEN = {
    # TensorFlow is the input pipeline only: hidden from accelerators there.
    "tensorflow": set(LAYERS) - {"data"},
    "tensorflow_datasets": set(LAYERS) - {"data"},
    # The core is pure: no checkpoints, plots, flags or metric writers.
    "orbax": {"core", "runtime", "data", "models"},
    "matplotlib": set(LAYERS) - {"reports"},
    "absl.flags": set(LAYERS),  # Flags belong to experiments/ entry points.
}
# Modules allowed one of FORBIDDEN, and why.
EXEMPT = {
    # Marks absl's flags parsed (defaults) for Grain, which reads its own
    # when it starts worker processes: defines and reads none.
    "data/train_input.py": {"absl.flags"},
}


def _layer(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  if parts == ("__init__",):
    return ""
  return parts[0]


def _modules():
  return sorted(PACKAGE.rglob("*.py"))


def _imports(path: pathlib.Path):
  """(line, imported module) for every import in the file, at any depth
  (imports inside functions count too)."""
  package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
  return _imports_in(path.read_text(), package)


def _imports_in(source: str, package: str):
  tree = ast.parse(source)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # Relative: resolve against the file's package.
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ""
      yield node.lineno, module
      for alias in node.names:  # `from dssn_jax import jobs` names a module.
        yield node.lineno, f"{module}.{alias.name}"


def _target_layer(module: str) -> str | None:
  parts = module.split(".")
  if parts[0] != "dssn_jax" or len(parts) < 2:
    return None
  return parts[1] if parts[1] in LAYERS else None


def test_the_checker_sees_every_form_of_import():
  source = (
      "import dssn_jax.runs.results\n"
      "from dssn_jax import jobs\n"
      "def f():\n"
      "  from ..reports import analysis\n"
      "  import tensorflow as tf\n"
  )
  found = [m for _, m in _imports_in(source, "dssn_jax.core")]
  assert "dssn_jax.runs.results" in found
  assert "dssn_jax.jobs" in found
  assert "dssn_jax.reports.analysis" in found
  assert "tensorflow" in found
  layers = {_target_layer(m) for m in found} - {None}
  assert layers == {"runs", "jobs", "reports"}


def test_every_module_is_in_a_layer():
  outside = [
      str(p.relative_to(PACKAGE))
      for p in _modules()
      if _layer(p) not in LAYERS + ("",)
  ]
  assert not outside, f"modules outside every layer: {outside}"


@pytest.mark.parametrize(
    "path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_imports_go_down_the_layers(path):
  layer = _layer(path)
  if layer == "":
    return  # The public API re-exports from any layer.
  rank = LAYERS.index(layer)
  wrong = []
  exempt = EXEMPT.get(str(path.relative_to(PACKAGE)), set())
  for line, module in _imports(path):
    target = _target_layer(module)
    if target is not None and LAYERS.index(target) > rank:
      wrong.append(f"line {line}: {module} ({target} is above {layer})")
    for forbidden, layers in FORBIDDEN.items():
      if (
          forbidden not in exempt
          and layer in layers
          and (module == forbidden or module.startswith(forbidden + "."))
      ):
        wrong.append(f"line {line}: {module} is not allowed in {layer}")
  assert not wrong, "\n".join(wrong)


def test_the_public_api_is_declared():
  import dssn_jax  # pylint: disable=g-import-not-at-top

  assert sorted(dssn_jax.__all__) == sorted(set(dssn_jax.__all__))
  for name in dssn_jax.__all__:
    assert hasattr(dssn_jax, name), name
