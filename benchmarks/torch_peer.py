r"""dssn-jax's certifier side by side with a PyTorch eager certifier.

What a user would otherwise run: the same WRN-40-2 (the authors' layout, in
`benchmarks.torch_models`, random weights, converted to ours with
`dssn_jax.training.convert`) certified by a PyTorch eager loop written the
usual way: float32 noisy copies generated per noise batch of 128 from the
paper's DSSN formulas, argmax votes counted on the host. Both run on the
same CIFAR-size grid images at sigma 0.5 and 3.5, in alternating timed
rounds, so that load from other processes hits both alike; the ratio of
their forward passes per second is taken per round and its median reported.
The two must agree on the counts of every image without a near-tie vote.

  python -m benchmarks.torch_peer --outdir=runs/torch_peer

Writes `torch_peer.json` and `torch_peer.md` to --outdir. Without torch
installed it says so and exits 0. Our side runs as a user gets it: the
default XLA options (`dssn_jax.runtime.xla_options`) and the default chunk size;
`DSSN_JAX_XLA_DEFAULTS=0` measures it without the options.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

_OUTDIR = flags.DEFINE_string(
    "outdir", "runs/torch_peer", "Directory for torch_peer.json and .md."
)
_SIGMAS = flags.DEFINE_list("sigmas", ["0.5", "3.5"], "Noise levels.")
_IMAGES = flags.DEFINE_integer("images", 2, "CIFAR-size images per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating timed rounds.")
_NOISE_BATCH = flags.DEFINE_integer(
    "noise_batch", 128, "Noisy copies per forward pass of the PyTorch peer."
)

NEAR_TIE = 1e-4  # Relative top-two logit gap below which votes may differ.


def torch_dssn_counts(
    model, image, offsets, levels: int, q: int = 255, noise_batch: int = 128
):
  """Exact DSSN votes of one image, PyTorch eager, the paper's formulas.

  For k = 0..L-1: s = ((v + k) mod L + 1/2) / q, t = ceil((x - s) q / L) L /
  q + s, and the noisy input is (min(t, 1) + max(t - L / q, 0)) / 2.

  Args:
    model: torch classifier on (n, C, H, W) float32 inputs in [0, 1].
    image: (C, H, W) float32 tensor on the 1/q grid.
    offsets: (C, H, W) int64 tensor in {0..L-1}.
    levels: L.
    q: quantization.
    noise_batch: noisy copies per forward pass.

  Returns:
    (counts (num_classes,) int64 numpy, the smallest relative gap between the
    top two logits over the L copies).
  """
  import torch  # pylint: disable=g-import-not-at-top

  counts, min_gap = None, np.inf
  with torch.inference_mode():
    for first in range(0, levels, noise_batch):
      k = torch.arange(
          first, min(first + noise_batch, levels), dtype=torch.float32
      ).reshape(-1, 1, 1, 1)
      s = (torch.remainder(offsets + k, levels) + 0.5) / q
      t = torch.ceil((image - s) * q / levels) * levels / q + s
      noisy = (
          torch.clamp(t, max=1.0) + torch.clamp(t - levels / q, min=0.0)
      ) / 2
      logits = model(noisy)
      votes = torch.bincount(torch.argmax(logits, 1), minlength=logits.shape[1])
      counts = votes if counts is None else counts + votes
      top2 = torch.topk(logits, 2, dim=1).values
      gap = (top2[:, 0] - top2[:, 1]) / logits.abs().max(1).values
      min_gap = min(min_gap, float(gap.min()))
  return counts.numpy(), min_gap


def _grid_images(n: int, seed: int = 0) -> np.ndarray:
  """(n, 32, 32, 3) float32 images on the 1/255 grid."""
  rng = np.random.RandomState(seed)
  return (rng.randint(0, 256, (n, 32, 32, 3)) / 255).astype(np.float32)


def _converted_pair(workdir: str):
  """(torch WRN-40-2, our classifier converted from its state_dict)."""
  import torch  # pylint: disable=g-import-not-at-top

  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  from dssn_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from dssn_jax.training import convert  # pylint: disable=g-import-not-at-top

  model = torch_models.random_wrn_40_2(seed=0)
  path = os.path.join(workdir, "wrn_40_2.pth")
  torch.save(model.state_dict(), path)
  convert.convert_checkpoint(
      path, "wrn_40_2", os.path.join(workdir, "ours"), sigma=0.5
  )
  return model, checkpoints.load_classifier(os.path.join(workdir, "ours"))


def compare(
    sigma: float,
    model,
    classifier,
    images: np.ndarray,
    *,
    rounds: int,
    noise_batch: int,
    log=print,
) -> dict[str, Any]:
  """Alternating timed rounds of both certifiers at one sigma."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  import dssn_jax  # pylint: disable=g-import-not-at-top

  spec = dssn_jax.SmoothingSpec(sigma)
  offsets = dssn_jax.make_offsets(0, images.shape[1:], spec.levels, "torch")
  theirs_offsets = torch.from_numpy(
      np.asarray(offsets).transpose(2, 0, 1).astype(np.int64)
  )
  theirs_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

  def ours():
    return np.asarray(
        jax.block_until_ready(
            dssn_jax.dssn_counts(
                classifier.apply_fn,
                images,
                offsets,
                spec,
                params=classifier.variables,
            )
        )
    )

  def peer():
    out = [
        torch_dssn_counts(
            model, image, theirs_offsets, spec.levels, noise_batch=noise_batch
        )
        for image in theirs_images
    ]
    return np.stack([c for c, _ in out]), np.array([g for _, g in out])

  ours_counts = ours()  # Compiles.
  passes = spec.levels * len(images)
  ours_rate, peer_rate, ratios = [], [], []
  for r in range(rounds):
    start = time.perf_counter()
    ours()
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    peer_counts, gaps = peer()
    peer_s = time.perf_counter() - start
    ours_rate.append(passes / ours_s)
    peer_rate.append(passes / peer_s)
    ratios.append(peer_s / ours_s)
    log(
        f"sigma={sigma} round {r + 1}: ours {passes / ours_s:.0f}, PyTorch "
        f"{passes / peer_s:.0f} forward passes/s ({peer_s / ours_s:.2f}x); "
        f"load {_loadavg()}"
    )
  clear = gaps > NEAR_TIE
  agree = bool(np.array_equal(ours_counts[clear], peer_counts[clear]))
  return {
      "sigma": sigma,
      "levels": spec.levels,
      "images": len(images),
      "ours_forward_per_s": statistics.median(ours_rate),
      "torch_forward_per_s": statistics.median(peer_rate),
      "ratio": statistics.median(ratios),
      "ratios": ratios,
      "images_without_near_ties": int(clear.sum()),
      "counts_agree": agree,
      "ours_counts": ours_counts.tolist(),
      "torch_counts": peer_counts.tolist(),
  }


def _loadavg() -> str:
  try:
    with open("/proc/loadavg") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return "n/a"


def environment() -> dict[str, Any]:
  """The machine and software a table was measured with."""
  import platform  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from dssn_jax.runtime import xla_options  # pylint: disable=g-import-not-at-top

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [
          l.split(":", 1)[1].strip() for l in f if l.startswith("model name")
      ]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return {
      "cpu": cpu,
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "computation": xla_options.computation_record("float32"),
      "loadavg_end": _loadavg(),
  }


def markdown(report: dict[str, Any]) -> str:
  env = report["environment"]
  lines = [
      f"WRN-40-2 (random weights), {report['rows'][0]['images']} CIFAR-size "
      f"images, {env['cpu']} ({env['cpu_count']} CPUs), JAX {env['jax']} "
      f"(XLA_FLAGS {env['computation']['xla_flags'] or '(none)'}), PyTorch "
      f"{env['torch']} eager ({env['torch_threads']} threads, noise batch "
      f"{report['noise_batch']}); medians of {report['rounds']} alternating "
      f"rounds, load average at the end {env['loadavg_end']}.",
      "",
      "| sigma | L | dssn-jax fwd/s | PyTorch eager fwd/s | ratio | "
      "counts agree (images without near ties) |",
      "|---|---|---|---|---|---|",
  ]
  for row in report["rows"]:
    lines.append(
        f"| {row['sigma']} | {row['levels']} | "
        f"{row['ours_forward_per_s']:.0f} | {row['torch_forward_per_s']:.0f} "
        f"| {row['ratio']:.2f}x | {'yes' if row['counts_agree'] else 'NO'} "
        f"({row['images_without_near_ties']}) |"
    )
  return "\n".join(lines) + "\n"


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def run(
    outdir: str,
    *,
    sigmas=(0.5, 3.5),
    images: int = 2,
    rounds: int = 3,
    noise_batch: int = 128,
    log=print,
) -> dict[str, Any] | None:
  """Both certifiers side by side; writes torch_peer.{json,md} to outdir.

  Returns:
    The report, or None (after saying so) when torch is not installed.
  """
  if not torch_available():
    log(
        "PyTorch peer skipped: PyTorch is not installed "
        "(pip install 'dssn-jax[torch]')."
    )
    return None
  # For its side effect: dssn_jax's default XLA options, before JAX starts.
  import dssn_jax  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import

  pixels = _grid_images(images)
  with tempfile.TemporaryDirectory() as workdir:
    model, classifier = _converted_pair(workdir)
  rows = [
      compare(
          float(s),
          model,
          classifier,
          pixels,
          rounds=rounds,
          noise_batch=noise_batch,
          log=log,
      )
      for s in sigmas
  ]
  report = {
      "rows": rows,
      "rounds": rounds,
      "noise_batch": noise_batch,
      "environment": environment(),
  }
  os.makedirs(outdir, exist_ok=True)
  with open(os.path.join(outdir, "torch_peer.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(outdir, "torch_peer.md"), "w") as f:
    f.write(markdown(report))
  return report


def main(argv):
  del argv
  report = run(
      _OUTDIR.value,
      sigmas=[float(s) for s in _SIGMAS.value],
      images=_IMAGES.value,
      rounds=_ROUNDS.value,
      noise_batch=_NOISE_BATCH.value,
  )
  if report is None:
    return 0
  print(markdown(report))
  return 0 if all(row["counts_agree"] for row in report["rows"]) else 1


if __name__ == "__main__":
  app.run(main)
