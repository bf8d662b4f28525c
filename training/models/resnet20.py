"""The So2Sat LCZ42 ResNet v2 of depth 20 (pre-activation bottleneck), as its Keras code builds it.

Stem: 3x3 conv(16) + BN + ReLU. Three stages of two bottleneck blocks; each block is
[BN, ReLU] 1x1 conv(d) -> BN, ReLU, 3x3 conv(d) -> BN, ReLU, 1x1 conv(4d or 2·in) added to
the input (the very first block skips its leading BN/ReLU; the first block of every stage
projects the shortcut with a 1x1 conv, stride 2 in stages 2 and 3). Widths 16 -> 64,
64 -> 128, 128 -> 256. Then BN, ReLU, 8x8 average pooling, flatten and Dense(classes,
softmax). Because of the flatten, only 32x32 patches fit the dense layer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .msmla import BN_EPS, BN_MOMENTUM


def _bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class PreActBottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int, preact: bool,
                 project: bool):
        super().__init__()
        self.bn_a = _bn(cin) if preact else None
        self.conv_a = nn.Conv2d(cin, width, 1, stride=stride)
        self.bn_b = _bn(width)
        self.conv_b = nn.Conv2d(width, width, 3, padding=1)
        self.bn_c = _bn(width)
        self.conv_c = nn.Conv2d(width, cout, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride) if project else None

    def forward(self, x):
        y = torch.relu(self.bn_a(x)) if self.bn_a is not None else x
        y = self.conv_a(y)
        y = self.conv_b(torch.relu(self.bn_b(y)))
        y = self.conv_c(torch.relu(self.bn_c(y)))
        return y + (self.shortcut(x) if self.shortcut is not None else x)


class ResNetV2(nn.Module):
    outputs_probabilities = False

    def __init__(self, channels: int = 10, classes: int = 17, depth: int = 20,
                 patch_size: int = 32):
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError("ResNet v2 depth must be 9n+2 (20, 29, 56 ...)")
        if patch_size % 32:
            raise ValueError("the So2Sat ResNet v2 needs 32x32 patches (8x8 pooling + flatten)")
        blocks_per_stage = (depth - 2) // 9
        self.stem = nn.Conv2d(channels, 16, 3, padding=1)
        self.stem_bn = _bn(16)
        self.blocks = nn.ModuleList()
        cin = 16
        for stage in range(3):
            cout = cin * 4 if stage == 0 else cin * 2
            for b in range(blocks_per_stage):
                first = b == 0
                self.blocks.append(PreActBottleneck(
                    cin if first else cout, cin, cout, stride=2 if first and stage else 1,
                    preact=not (stage == 0 and first), project=first))
            cin = cout
        self.final_bn = _bn(cin)
        self.pool = patch_size // 32 * 8
        self.classifier = nn.Linear(cin * (patch_size // 4 // self.pool) ** 2, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        x = F.avg_pool2d(torch.relu(self.final_bn(x)), self.pool)
        # Keras flattens NHWC: channels last
        return self.classifier(x.permute(0, 2, 3, 1).flatten(1))

    def probabilities(self, x):
        """The Keras model's output (softmax); exported for the converted pretrained model."""
        return torch.softmax(self(x), dim=1)


def resnet20(channels: int = 10, classes: int = 17, patch_size: int = 32, **options) -> ResNetV2:
    return ResNetV2(channels, classes, 20, patch_size, **options)
