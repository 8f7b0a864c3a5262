"""The authors' CIFAR-10 network in PyTorch, with their state_dict layout.

WRN-40-2 (pre-activation wide residual network, the authors' CIFAR-10 model
of Levine & Feizi), wrapped as the authors save their models: an `Authors`
module holding `norm` (their normalization, after the noise) and `model`,
both in `nn.DataParallel`, so state_dict keys read `model.module.<layer>`
and `norm.module.{mu,log_sig}`; `randomize` gives any such network random
weights and BatchNorm statistics. Written from the papers' architecture
descriptions for the PyTorch peer benchmark (`benchmarks.torch_peer`), whose
network the converter's tests also check (their other networks are in
tests/torch_reference.py); no third-party code.

Inputs are NCHW float tensors in [0, 1].
"""

import torch
from torch import nn
import torch.nn.functional as F

CIFAR_MU = (0.4914, 0.4822, 0.4465)
CIFAR_SIG = (0.2023, 0.1994, 0.2010)


class WideBlock(nn.Module):
  """rs4a / xternalz pre-activation block (shortcut of the activated input)."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.equal = cin == cout
    self.convShortcut = (
        None
        if self.equal  # pylint: disable=invalid-name
        else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
    )

  def forward(self, x):
    out = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return (x if self.equal else self.convShortcut(out)) + y


class NetworkBlock(nn.Module):

  def __init__(self, n, cin, cout, stride):
    super().__init__()
    self.layer = nn.Sequential(
        *[
            WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
            for i in range(n)
        ]
    )

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  """WideResNet(depth=40, widen_factor=2) of the authors' src/lib."""

  def __init__(self, depth=40, k=2, num_classes=10):
    super().__init__()
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.block1 = NetworkBlock(n, 16, 16 * k, 1)
    self.block2 = NetworkBlock(n, 16 * k, 32 * k, 2)
    self.block3 = NetworkBlock(n, 32 * k, 64 * k, 2)
    self.bn1 = nn.BatchNorm2d(64 * k)
    self.fc = nn.Linear(64 * k, num_classes)

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
    return self.fc(out.flatten(1))


class Normalize(nn.Module):
  """The authors' NormalizeLayer: (x - mu) / exp(log_sig), after the noise."""

  def __init__(self, mu, sig):
    super().__init__()
    self.mu = nn.Parameter(
        torch.tensor(mu).reshape(3, 1, 1), requires_grad=False
    )
    self.log_sig = nn.Parameter(
        torch.log(torch.tensor(sig)).reshape(3, 1, 1), requires_grad=False
    )

  def forward(self, x):
    return (x - self.mu) / torch.exp(self.log_sig)


class Authors(nn.Module):
  """Their Forecaster: `norm` and `model`, each in DataParallel."""

  def __init__(self, net, mu, sig):
    super().__init__()
    self.norm = nn.DataParallel(Normalize(mu, sig))
    self.model = nn.DataParallel(net)

  def forward(self, x):
    return self.model(self.norm(x))


def randomize(model, image_size, seed):
  """Random weights and non-trivial BatchNorm statistics, then eval mode.

  Running statistics are first estimated on random images (so activations
  keep a sensible scale through the depth), then perturbed, and the affine
  BatchNorm parameters are random.
  """
  torch.manual_seed(seed)
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.momentum = None  # Cumulative average.
  model.train()
  with torch.no_grad():
    model(torch.rand(16, 3, image_size, image_size))
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.add_(0.1 * torch.randn_like(m.running_mean))
        m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
    # Centre the logits on random images: a random deep network otherwise
    # predicts one class for every input, and the vote test would be vacuous.
    model.eval()
    net = model.model.module
    fc = net.linear if hasattr(net, "linear") else net.fc  # Option-A: linear.
    features = []
    hook = fc.register_forward_hook(lambda m, i, o: features.append(i[0]))
    model(torch.rand(16, 3, image_size, image_size))
    hook.remove()
    fc.weight.mul_(10.0)  # Logits of order 1.
    fc.bias.copy_(-fc.weight @ features[0].mean(0))
  return model


def random_wrn_40_2(seed: int = 0) -> nn.Module:
  """An `Authors`-wrapped WRN-40-2 for CIFAR-10 with random weights and
  BatchNorm statistics (see `randomize`), in eval mode."""
  torch.manual_seed(seed)  # Construction draws the weights: seed it first.
  return randomize(Authors(WideResNet(), CIFAR_MU, CIFAR_SIG), 32, seed)
