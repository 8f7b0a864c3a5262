r"""Randomized certificates at N = 500 beside N = 100,000, image for image.

  python -m experiments.sample_size_table \
      --results=docs/fashion_mnist/full_n --out=docs/fashion_mnist/full_n.md \
      --exact=docs/fashion_mnist/results/dssn_0.5/certify_dssn.tsv,\
docs/fashion_mnist/results/dssn_1/certify_dssn.tsv

Each subdirectory of --results (one per sigma) holds one classifier
certified twice on the same images:
`--small_name` (N = 500) and `--large_name` (N = 100,000), as
`python -m experiments.certify --config=configs/fashion_mnist.py:full_n`
writes them (docs/fashion_mnist.md, "The baselines at N = 100,000"). Writes
the certified accuracy of both and of the estimate from the small one (and
of the --exact runs of the same sigmas on the same images), how far the
estimate is from the certified radii, and a per-image table.
"""

import os

from absl import app
from absl import flags

from dssn_jax.reports import sample_size
import experiments

_RESULTS = flags.DEFINE_string(
    "results", None, "Directory of run directories, one per sigma."
)
_SMALL = flags.DEFINE_string(
    "small_name", "certify_uniform_n500.tsv", "Results at the small N."
)
_LARGE = flags.DEFINE_string(
    "large_name", "certify_uniform.tsv", "Results at the large N."
)
_RADII = flags.DEFINE_list(
    "radii", ["0", "0.25", "0.5", "0.75", "1", "1.5"], "l1 radii."
)
_EXACT = flags.DEFINE_list(
    "exact",
    [],
    "DSSN results files to add, on the same images, at their sigma.",
)
_OUT = flags.DEFINE_string("out", None, "Markdown file to write.")
flags.mark_flags_as_required(["results", "out"])


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():
    radii = [float(r) for r in _RADII.value]
    runs = sorted(
        os.path.join(_RESULTS.value, name)
        for name in os.listdir(_RESULTS.value)
        if os.path.isfile(os.path.join(_RESULTS.value, name, _LARGE.value))
    )
    if not runs:
      raise ValueError(
          f"No run directory with {_LARGE.value} in --results="
          f"{_RESULTS.value}; pass the directory that holds them."
      )
    comparisons = sorted(
        (
            sample_size.compare(
                os.path.join(run, _SMALL.value),
                os.path.join(run, _LARGE.value),
            )
            for run in runs
        ),
        key=lambda c: c.sigma,
    )
    exact = [sample_size.load_exact(path) for path in _EXACT.value]
    markdown = sample_size.report_markdown(comparisons, radii, exact)
    with open(_OUT.value, "w") as f:
      f.write(markdown)
    print(markdown.split("\n## Per image")[0])


if __name__ == "__main__":
  app.run(main)
