r"""Tables of the denoised-smoothing study from its per-image results.

  python -m experiments.denoised_tables --results=docs/denoised/results \
      --reference=docs/fashion_mnist/results --out=docs/denoised/tables.md

--results holds one directory per denoised run (den_<noise>_<objective>_
<sigma>, as experiments/denoised_study.sh names them); --reference the
Fashion-MNIST study's runs (dssn_<sigma>, uniform_<sigma>), the classifiers
trained under noise that the denoisers are compared with.
"""

import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from dssn_jax import data
from dssn_jax import denoised_report
from dssn_jax import models
import experiments

_RESULTS = flags.DEFINE_string("results", None, "Denoised runs' results.")
_REFERENCE = flags.DEFINE_string("reference", None,
                                 "docs/fashion_mnist/results.")
_OUT = flags.DEFINE_string("out", None, "The markdown file to write.")
flags.mark_flags_as_required(["results", "reference", "out"])

SIGMAS = ("0.25", "0.5")
RADII = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# Row label -> (directory under --reference or --results, name pattern).
ROWS = (
    ("DSSN-trained classifier", "reference", "dssn_{s}"),
    ("Uniform-trained classifier (N = 500)", "reference", "uniform_{s}"),
    ("Clean classifier + DnCNN, DSSN noise, MSE", "results",
     "den_dssn_mse_{s}"),
    ("Clean classifier + DnCNN, DSSN noise, stability", "results",
     "den_dssn_stability_{s}"),
    ("Clean classifier + DnCNN, uniform noise, MSE (N = 500)", "results",
     "den_uniform_mse_{s}"),
    ("Clean classifier + DnCNN, uniform noise, stability (N = 500)",
     "results", "den_uniform_stability_{s}"),
)


def _flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def forward_flops(groups) -> dict[str, float]:
  """XLA's FLOPs of one 28x28 forward of each row's base classifier."""
  info = data.dataset_info("fashion_mnist")
  x = jnp.zeros((1,) + tuple(info.input_shape))
  clf = models.create_model("small_cnn", num_classes=info.num_classes,
                            mean=info.mean, std=info.std)
  clf_flops = _flops(lambda v, x: clf.apply(v, x),
                     clf.init(jax.random.key(0), x), x)
  flops = {}
  for label, runs in groups.items():
    denoised = runs[0].metadata.get("denoised")
    if denoised is None:
      flops[label] = clf_flops
      continue
    den = models.create_denoiser(denoised["denoiser"], channels=x.shape[-1],
                                 depth=denoised["denoiser_depth"],
                                 width=denoised["denoiser_width"])
    flops[label] = clf_flops + _flops(lambda v, x: den.apply(v, x),
                                      den.init(jax.random.key(0), x), x)
  return flops


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():
    roots = {"reference": _REFERENCE.value, "results": _RESULTS.value}
    groups = {label: denoised_report.load_group(
        [os.path.join(roots[root], pattern.format(s=s)) for s in SIGMAS])
              for label, root, pattern in ROWS}
    markdown = denoised_report.report(groups, RADII, forward_flops(groups))
  with open(_OUT.value, "w") as f:
    f.write(markdown)
  print(markdown)


if __name__ == "__main__":
  app.run(main)
