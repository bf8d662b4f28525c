"""Sen2LCZ-Net-MF (Qiu, Tong, Schmitt, Bechtel & Zhu 2020), as its Keras code builds it.

Four blocks of four 3x3 convolution + BatchNorm + ReLU (widths 16, 32, 64, 128). After each
of the first three blocks the feature map is halved by concatenating 2x2 max pooling and 2x2
average pooling (doubling the channels); dropout 0.2 follows the second and third merge. Each
merge and the last block feed a head GAP -> Dense(classes, softmax); the output is the mean of
the four softmaxes, so the model outputs *probabilities* (``output_kind = probabilities``).
For training, :meth:`Sen2LczNet.forward` returns the log of that mean, which works with the
same cross-entropy as a logits model and is what temperature scaling uses (docs/training.md,
"Evaluation and calibration").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .msmla import BN_EPS, BN_MOMENTUM


class ConvBlock(nn.Module):
    def __init__(self, cin: int, width: int, depth: int = 4):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin if i == 0 else width, width, 3, padding=1)
                                   for i in range(depth))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM)
                                 for _ in range(depth))

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            x = torch.relu(bn(conv(x)))
        return x


class Sen2LczNet(nn.Module):
    outputs_probabilities = True

    def __init__(self, channels: int = 10, classes: int = 17, widths=(16, 32, 64, 128),
                 dropout: float = 0.2):
        super().__init__()
        self.blocks = nn.ModuleList()
        cin = channels
        for w in widths:
            self.blocks.append(ConvBlock(cin, w))
            cin = 2 * w
        self.merge_heads = nn.ModuleList(nn.Linear(2 * w, classes) for w in widths[:3])
        self.final_head = nn.Linear(widths[3], classes)
        self.dropout = nn.Dropout(dropout)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def probabilities(self, x):
        heads = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < 3:
                x = torch.cat([F.max_pool2d(x, 2), F.avg_pool2d(x, 2)], dim=1)
                heads.append(torch.softmax(self.merge_heads[i](x.mean(dim=(2, 3))), dim=1))
                if i > 0:
                    x = self.dropout(x)
        final = torch.softmax(self.final_head(x.mean(dim=(2, 3))), dim=1)
        return (final + heads[0] + heads[1] + heads[2]) / 4

    def forward(self, x):
        """Log of the averaged probabilities (use as logits for loss and temperature)."""
        return torch.log(self.probabilities(x).float().clamp_min(1e-12))


def sen2lcz(channels: int = 10, classes: int = 17, **options) -> Sen2LczNet:
    return Sen2LczNet(channels, classes, **options)
