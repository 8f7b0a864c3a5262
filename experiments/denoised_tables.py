r"""Tables of the denoised-smoothing study from its per-image results.

  python -m experiments.denoised_tables --results=docs/denoised/results \
      --reference=docs/fashion_mnist/results --out=docs/denoised/tables.md

--results holds one directory per denoised run (den_<noise>_<objective>_
<sigma>, as experiments/denoised_study.sh names them); --reference the
Fashion-MNIST study's runs (dssn_<sigma>, uniform_<sigma>), the classifiers
trained under noise that the denoisers are compared with.
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import fashion_mnist as fashion_mnist_config
import dssn_jax
from dssn_jax import models
from dssn_jax.data import datasets
from dssn_jax.reports import denoised
from dssn_jax.training import denoising
import experiments

_RESULTS = flags.DEFINE_string("results", None, "Denoised runs' results.")
_REFERENCE = flags.DEFINE_string(
    "reference", None, "docs/fashion_mnist/results."
)
_OUT = flags.DEFINE_string("out", None, "The markdown file to write.")
_TIMING_OUT = flags.DEFINE_string(
    "timing_out",
    None,
    "Also time DSSN certification of the small CNN with "
    "and without the study's DnCNN side by side, into this JSON file.",
)
flags.mark_flags_as_required(["results", "reference", "out"])


def time_certification(
    depth: int,
    width: int,
    *,
    sigma: float = 0.5,
    images: int = 16,
    rounds: int = 3,
) -> dict:
  """Seconds per image of DSSN certification (all L forwards) of the small
  CNN alone and behind a DnCNN, interleaved rounds on the same random grid
  images (the weights do not change the time)."""
  info = datasets.dataset_info("fashion_mnist")
  shape = tuple(info.input_shape)
  x = (
      jnp.round(jax.random.uniform(jax.random.key(0), (images,) + shape) * 255)
      / 255
  )
  clf = models.create_model(
      "small_cnn", num_classes=info.num_classes, mean=info.mean, std=info.std
  )
  den = models.create_denoiser(
      "dncnn", channels=shape[-1], depth=depth, width=width
  )
  cv = clf.init(jax.random.key(1), x[:1])
  dv = den.init(jax.random.key(2), x[:1])
  spec = dssn_jax.SmoothingSpec(sigma)
  v = dssn_jax.make_offsets(0, shape, spec.levels)
  subjects = {
      "small_cnn": (lambda p, x: clf.apply(p, x), cv),
      f"dncnn_{depth}x{width}+small_cnn": (
          lambda p, x: clf.apply(p["clf"], den.apply(p["den"], x)),
          {"clf": cv, "den": dv},
      ),
  }
  seconds = {name: [] for name in subjects}
  for fn, params in subjects.values():  # Compile outside the timing.
    dssn_jax.dssn_counts(fn, x, v, spec, params=params).block_until_ready()
  for _ in range(rounds):
    for name, (fn, params) in subjects.items():
      start = time.perf_counter()
      dssn_jax.dssn_counts(fn, x, v, spec, params=params).block_until_ready()
      seconds[name].append((time.perf_counter() - start) / images)
  return {
      "sigma": sigma,
      "levels": spec.levels,
      "images": images,
      "rounds": rounds,
      "load_average": list(os.getloadavg()),
      "seconds_per_image": {k: float(np.median(t)) for k, t in seconds.items()},
      "all_rounds": seconds,
  }


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():
    groups = denoised.build_groups(_RESULTS.value, _REFERENCE.value)
    markdown = denoised.report(
        groups, denoised.RADII, denoising.forward_flops(groups)
    )
  with open(_OUT.value, "w") as f:
    f.write(markdown)
  print(markdown)
  if _TIMING_OUT.value:
    # The DnCNN of the study's config (the runs' metadata record the same).
    study = fashion_mnist_config.get_config("denoised").denoiser
    timing = time_certification(study.depth, study.width)
    with open(_TIMING_OUT.value, "w") as f:
      json.dump(timing, f, indent=2)
    print(json.dumps(timing["seconds_per_image"], indent=2))


if __name__ == "__main__":
  app.run(main)
