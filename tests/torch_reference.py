"""PyTorch networks of the converter's tests, beside the authors' WRN-40-2.

torchvision's ResNet-50 (the authors' ImageNet model) and Idelbayev's
option-A ResNet-110 (the one of the authors' rs4a code), with the module
names, hence the state_dict keys, of the originals; wrap them in
`benchmarks.torch_models.Authors` and give them weights with
`benchmarks.torch_models.randomize`, as for the WRN-40-2 the PyTorch peer
benchmark certifies. Written from the papers' architecture descriptions; no
third-party code. Inputs are NCHW float tensors in [0, 1].
"""

from torch import nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (v1.5, stride on the 3x3 convolution)."""

  def __init__(self, cin, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * width)
    self.downsample = None
    if stride != 1 or cin != 4 * width:
      self.downsample = nn.Sequential(
          nn.Conv2d(cin, 4 * width, 1, stride, bias=False),
          nn.BatchNorm2d(4 * width),
      )

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
  """torchvision's resnet50 (same module names, so the same state_dict)."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
      width = 64 * 2 ** (stage - 1)
      stride = 1 if stage == 1 else 2
      stage_blocks = []
      for i in range(blocks):
        stage_blocks.append(Bottleneck(cin, width, stride if i == 0 else 1))
        cin = 4 * width
      setattr(self, f"layer{stage}", nn.Sequential(*stage_blocks))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(2048, num_classes)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(self.avgpool(x).flatten(1))


class OptionABlock(nn.Module):
  """Idelbayev's basic block with the option-A shortcut: subsample by 2 and
  zero-pad the channels, planes // 4 on each side."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.pad = cout // 4 if stride != 1 or cin != cout else 0

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    if self.pad:
      x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
    return F.relu(out + x)


class OptionAResNet110(nn.Module):
  """Idelbayev's CIFAR ResNet-110 (rs4a's), classifier named `linear`."""

  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    cin = 16
    for stage, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2)), 1):
      blocks = []
      for i in range(18):
        blocks.append(OptionABlock(cin, cout, stride if i == 0 else 1))
        cin = cout
      setattr(self, f"layer{stage}", nn.Sequential(*blocks))
    self.linear = nn.Linear(64, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.linear(x.mean(dim=(2, 3)))
