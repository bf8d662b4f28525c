"""MSMLA: multi-scale, multi-level attention network (Kim, Jeong & Kim 2021, ISPRS J. 181).

Built as the authors' Keras graph builds it (docs/training.md, "MSMLA as the authors built
it", lists the differences from the paper):

- multi-scale stem: parallel 5x5 -> 16, 3x3 -> 32 and 1x1 -> 16 convolutions on the input
  ('same', with bias, no BatchNorm or activation), concatenated to 64 channels;
- SE-ResNet backbone of three stages, stride 2 in the first block of stages 2 and 3
  (48 -> 48 -> 24 -> 12 px). MSMLA-18: 2-2-2 basic blocks of widths 16/32/64 (the first
  block of a stage starts with a 1x1 convolution); MSMLA-50: 3-4-6 bottlenecks
  1x1(d) -> 3x3(d) -> 1x1(4d), outputs 64/128/256. Squeeze-and-excitation (reduction 8) on
  the residual branch before the addition;
- multi-level attention: CBAM on the stem output and after the first block of each stage,
  each followed by global average pooling;
- head: concatenated pooled features (240 for MSMLA-18, 768 for MSMLA-50) -> Dense(classes).

The authors' CBAM differs from the CBAM paper: channel attention a = ReLU(W2 ReLU(W1 GAP(x))),
m = ReLU(W3 a), x * sigmoid(a + m) (their max-pool branch is dead code). ``cbam="faithful"``
builds that; ``cbam="paper"`` builds the published CBAM (shared MLP on average and max pool).
Keras BatchNorm settings (eps 1e-3, momentum 0.99) are kept. The forward pass returns logits.
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # Keras momentum 0.99


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.squeeze = nn.Linear(channels, channels // reduction)
        self.excite = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        s = torch.relu(self.squeeze(x.mean(dim=(2, 3))))
        return x * torch.sigmoid(self.excite(s))[:, :, None, None]


class BasicBlock(nn.Module):
    """Two convolutions + SE; the first block of a stage starts with a strided 1x1 and has a
    projection shortcut."""

    def __init__(self, cin: int, width: int, stride: int, first: bool):
        super().__init__()
        k = 1 if first else 3
        self.conv_a = nn.Conv2d(cin, width, k, stride=stride, padding=k // 2)
        self.bn_a = _bn(width)
        self.conv_b = nn.Conv2d(width, width, 3, padding=1)
        self.bn_b = _bn(width)
        self.se = SqueezeExcite(width)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, width, 1, stride=stride), _bn(width))
                         if first else nn.Identity())
        self.out_channels = width

    def forward(self, x):
        y = torch.relu(self.bn_a(self.conv_a(x)))
        y = self.se(self.bn_b(self.conv_b(y)))
        return torch.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, first: bool):
        super().__init__()
        out = 4 * width
        self.conv_a = nn.Conv2d(cin, width, 1, stride=stride)
        self.bn_a = _bn(width)
        self.conv_b = nn.Conv2d(width, width, 3, padding=1)
        self.bn_b = _bn(width)
        self.conv_c = nn.Conv2d(width, out, 1)
        self.bn_c = _bn(out)
        self.se = SqueezeExcite(out)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, out, 1, stride=stride), _bn(out))
                         if first else nn.Identity())
        self.out_channels = out

    def forward(self, x):
        y = torch.relu(self.bn_a(self.conv_a(x)))
        y = torch.relu(self.bn_b(self.conv_b(y)))
        y = self.se(self.bn_c(self.conv_c(y)))
        return torch.relu(y + self.shortcut(x))


class CBAM(nn.Module):
    """Channel then spatial attention; ``faithful`` follows the authors' code."""

    def __init__(self, channels: int, reduction: int = 8, faithful: bool = True):
        super().__init__()
        self.faithful = faithful
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.fc3 = nn.Linear(channels, channels) if faithful else None
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x):
        if self.faithful:
            a = torch.relu(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
            weight = a + torch.relu(self.fc3(a))
        else:
            def mlp(v):
                return self.fc2(torch.relu(self.fc1(v)))
            weight = mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3)))
        x = x * torch.sigmoid(weight)[:, :, None, None]
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class MSMLA(nn.Module):
    def __init__(self, channels: int, classes: int = 17, block: str = "basic",
                 depths=(2, 2, 2), widths=(16, 32, 64), cbam: str = "faithful"):
        super().__init__()
        if cbam not in ("faithful", "paper"):
            raise ValueError("cbam must be 'faithful' or 'paper'")
        block_type = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.faithful = cbam == "faithful"
        self.stem = nn.ModuleList([nn.Conv2d(channels, 16, 5, padding=2),
                                   nn.Conv2d(channels, 32, 3, padding=1),
                                   nn.Conv2d(channels, 16, 1)])
        cin = 64
        self.taps = nn.ModuleList([CBAM(cin, faithful=cbam == "faithful")])
        self.stages = nn.ModuleList()
        for stage, (depth, width) in enumerate(zip(depths, widths)):
            blocks = nn.ModuleList()
            for i in range(depth):
                blk = block_type(cin, width, stride=2 if stage > 0 and i == 0 else 1,
                                 first=i == 0)
                blocks.append(blk)
                cin = blk.out_channels
                if i == 0:
                    self.taps.append(CBAM(cin, faithful=cbam == "faithful"))
            self.stages.append(blocks)
        features = cin + sum(t.fc2.out_features for t in self.taps)
        self.classifier = nn.Linear(features, classes)
        self.features = features
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = torch.cat([conv(x) for conv in self.stem], dim=1)
        pooled = [self.taps[0](x).mean(dim=(2, 3))]
        for s, blocks in enumerate(self.stages):
            for i, blk in enumerate(blocks):
                x = blk(x)
                if i == 0:
                    pooled.append(self.taps[s + 1](x).mean(dim=(2, 3)))
        return self.classifier(torch.cat([x.mean(dim=(2, 3))] + pooled, dim=1))


def msmla18(channels: int, classes: int = 17, cbam: str = "faithful") -> MSMLA:
    return MSMLA(channels, classes, "basic", (2, 2, 2), (16, 32, 64), cbam)


def msmla50(channels: int, classes: int = 17, cbam: str = "faithful") -> MSMLA:
    return MSMLA(channels, classes, "bottleneck", (3, 4, 6), (16, 32, 64), cbam)


def count_parameters(model: nn.Module) -> int:
    """Parameters plus BatchNorm running statistics, as Keras counts a model's weights."""
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean",
                                                                                   "running_var")))
    return sum(p.numel() for p in model.parameters()) + stats
