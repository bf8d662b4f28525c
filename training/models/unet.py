"""U-Net: a dense LCZ model, class scores for every pixel of a tile (Ronneberger et al. 2015).

A light U-Net for Sentinel-2 stacks at 10 m: ``depth`` levels of two 3x3 convolutions
(padding 1, no bias) + BatchNorm + ReLU each, 2x2 max-pooling between levels, a bottleneck
level, then on the way up a bilinear 2x upsampling, the concatenated skip connection of the
same level and two more convolutions; a 1x1 convolution gives the logits ``N x K x H x W``.
Output stride 1: one score vector per input pixel. Widths double per level from ``width``.

``output_stride`` s (a power of two, at most 2^depth) stops the decoder s times above the
input resolution: the way up ends at level log2(s), whose 1x1 head gives ``N x K x H/s x W/s``
logits, one per s x s input pixels (s = 4 at 10 m: one per 40 m). The decoder's costliest,
full-resolution levels are left out, and so is their per-pixel work in ``lcz:classify``; a
100 m cell is still the mean of the output pixels it holds. Training compares each output
pixel with every labelled pixel it covers.

Two facts of the architecture go into the model card (:mod:`lcz_qgis_plugin.core.model.card`):

``tile_multiple`` = 2^depth
    input edges must be multiples of it (every pooling halves an even size), and tiles start
    on multiples of it so that every tile sees the same pooling grid.
``receptive_field``
    the edge of the centred square of input pixels that any output pixel can see, computed
    exactly from the layers by :func:`receptive_field` (the plugin overlaps its tiles by at
    least half of it, so that every kept pixel saw all of its context).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MAX_DEPTH = 6


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True))


class UNet(nn.Module):
    """``UNet(in_channels, n_classes, depth=3, width=16, output_stride=1)``: logits
    ``N x K x H/s x W/s`` for input ``N x C x H x W`` (H and W multiples of
    :attr:`tile_multiple`, s the output stride)."""

    kind = "dense"

    def __init__(self, in_channels: int, n_classes: int, depth: int = 3, width: int = 16,
                 output_stride: int = 1):
        super().__init__()
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"U-Net depth {depth}: choose --depth 1 to {MAX_DEPTH} (levels)")
        if width < 1:
            raise ValueError(f"U-Net width {width}: choose --width 1 or more (channels)")
        strides = [2 ** level for level in range(depth + 1)]
        if output_stride not in strides:
            raise ValueError(f"U-Net output stride {output_stride}: choose --output-stride "
                             f"{', '.join(map(str, strides))} (a power of two, at most "
                             f"2^depth)")
        self.depth, self.width, self.output_stride = depth, width, output_stride
        self.top = output_stride.bit_length() - 1  # the level the decoder stops at
        widths = [width * 2 ** level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            [_block(in_channels if level == 0 else widths[level - 1], widths[level])
             for level in range(depth)])
        self.bottom = _block(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList(  # levels below ``top`` are never run: not built
            [_block(widths[level + 1] + widths[level], widths[level])
             for level in range(self.top, depth)])
        self.head = nn.Conv2d(widths[self.top], n_classes, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    @property
    def tile_multiple(self) -> int:
        return 2 ** self.depth

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.depth, self.output_stride)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for level in reversed(range(self.top, self.depth)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[level - self.top](torch.cat([skips[level], x], dim=1))
        return self.head(x)


def unet(channels: int, classes: int = 17, depth: int = 3, width: int = 16,
         output_stride: int = 1) -> UNet:
    return UNet(channels, classes, depth=depth, width=width, output_stride=output_stride)


# -- the receptive field, from the layers --------------------------------------------------------
def _encoder_span(level: int, lo: int, hi: int) -> tuple[int, int]:
    """Input pixels (first, last) that the encoder output of ``level`` sees at positions
    ``lo..hi`` (in that level's pixels): two 3x3 convolutions widen by one pixel of the level
    on each side each, then a 2x2 max-pool of the level below covers 2i .. 2i+1."""
    lo, hi = lo - 2, hi + 2
    if level == 0:
        return lo, hi
    return _encoder_span(level - 1, 2 * lo, 2 * hi + 1)


def _decoder_span(level: int, depth: int, lo: int, hi: int) -> tuple[int, int]:
    """Input pixels that the decoder output of ``level`` sees at ``lo..hi``: its two
    convolutions, then the union of the skip (the encoder of the same level) and the
    upsampled level below. Bilinear 2x upsampling (align_corners False) reads, for output
    pixel i, the source pixels floor(i/2 - 1/4) and the next one: floor((i-1)/2) for the
    first, floor((i+1)/2) for the last of a span."""
    lo, hi = lo - 2, hi + 2
    skip = _encoder_span(level, lo, hi)
    below = ((lo - 1) // 2, (hi + 1) // 2)
    deep = (_encoder_span(depth, *below) if level + 1 == depth
            else _decoder_span(level + 1, depth, *below))
    return min(skip[0], deep[0]), max(skip[1], deep[1])


def receptive_field(depth: int, output_stride: int = 1) -> int:
    """The edge in pixels of the smallest square centred on an output pixel that holds every
    input pixel it sees, for any position of that pixel in the pooling grid: s + 2 r, s the
    output stride (the s x s input pixels the output pixel covers) and r the largest reach
    beyond them to either side (away from the raster edges, where padding and the upsampling
    clamp only shorten it). Exact for this architecture (the test checks it on the network)."""
    top = output_stride.bit_length() - 1
    reach = 0
    for p in range(2 ** (depth - top)):  # every position in the pooling grid
        centre = 2 ** depth * 1000 + p  # in the output's pixels
        lo, hi = _decoder_span(top, depth, centre, centre) if top < depth else \
            _encoder_span(depth, centre, centre)
        first, last = centre * output_stride, (centre + 1) * output_stride - 1
        reach = max(reach, first - lo, hi - last)
    return output_stride + 2 * reach
