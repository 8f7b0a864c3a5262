"""Tests for benchmarks/torch_peer.py: the PyTorch eager peer certifier."""

import json

import numpy as np
import pytest
import torch

from benchmarks import torch_peer
import dssn_jax


def test_peer_counts_equal_exact_votes_of_a_linear_model():
  # A linear classifier with well-separated logits: the peer's float32
  # noise must give the exact DSSN counts of our certifier.
  torch.manual_seed(0)
  linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
  spec = dssn_jax.SmoothingSpec(0.1)
  v = dssn_jax.make_offsets(3, (4, 4, 3), spec.levels, "torch")
  x = (np.random.RandomState(1).randint(0, 256, (2, 4, 4, 3)) / 255).astype(
      np.float32
  )
  weight = linear[1].weight.detach().numpy()
  bias = linear[1].bias.detach().numpy()

  def ours_apply(batch):  # NHWC batch, same weights as the NCHW torch model.
    flat = batch.transpose(0, 3, 1, 2).reshape(batch.shape[0], -1)
    return flat @ weight.T + bias

  ours = np.asarray(dssn_jax.dssn_counts(ours_apply, x, v, spec))
  offsets = torch.from_numpy(np.asarray(v).transpose(2, 0, 1).astype(np.int64))
  for i in range(len(x)):
    image = torch.from_numpy(x[i].transpose(2, 0, 1).copy())
    counts, gap = torch_peer.torch_dssn_counts(
        linear, image, offsets, spec.levels, noise_batch=16
    )
    assert counts.sum() == spec.levels
    if gap > torch_peer.NEAR_TIE:
      np.testing.assert_array_equal(counts, ours[i])


@pytest.mark.slow
def test_run_writes_the_side_by_side_table(tmp_path):
  report = torch_peer.run(
      str(tmp_path), sigmas=(0.05,), images=1, rounds=1, log=lambda _: None
  )
  row = report["rows"][0]
  assert row["levels"] == 44 and row["images"] == 1
  assert row["counts_agree"]
  assert row["ours_forward_per_s"] > 0 and row["torch_forward_per_s"] > 0
  assert np.sum(row["ours_counts"]) == 44
  assert json.loads((tmp_path / "torch_peer.json").read_text())["rows"]
  table = (tmp_path / "torch_peer.md").read_text()
  assert "| 0.05 | 44 |" in table and "PyTorch" in table
