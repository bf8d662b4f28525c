"""Build a model's input stack from any number of rasters (``lcz:buildstack``).

The model's channels (``lcz.channels`` in its ONNX metadata) are looked up by band
description in the given rasters (first raster wins when two provide the same name), checked
to lie on one grid (CRS, origin, pixel size, size) at the model's pixel size, and written in
the model's order, either as a VRT (no copy: bands refer to the source files) or as a tiled
GeoTIFF copied block by block.

The model card is read straight from the ONNX file's protobuf (:mod:`.modelfile`), so
building a stack needs neither onnxruntime nor the onnx package.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from ..channels import (
    PRESETS,
    InputBands,
    band_channels,
    band_descriptions,
    canonical_channel,
    parse_input_bands,
)
from ..errors import InputError
from ..feedback import Feedback, describe_files
from ..model.card import ModelCard
from ..model.card_file import read_model_card
from ..outputs import PendingOutputs
from ..rasters import (
    FLOAT_NODATA,
    TILED,
    bounded_cache,
    check_cancel,
    check_georeferencing,
    open_raster,
    row_blocks,
)
from ..stacks import SOURCES, sources_of_all
from .reference_grid import grid_of


@dataclass
class ChannelList:
    """The channels to stack when no model exists yet (a training stack for
    lcz:extractpatches): names in order, no pixel-size requirement."""

    channels: list[str]
    pixel_size: float | None = None

    def describe(self) -> str:
        return f"channel list ({len(self.channels)} channels)"


def parse_channel_list(text: str) -> list[str]:
    """'S2:B02, S2:B03 ...' (commas, semicolons or new lines) -> names, duplicates refused.
    Bare Sentinel-2 ids count as contract names ('B2' -> 'S2:B02')."""
    names = [canonical_channel(n) for n in re.split(r"[,;\n]", text or "") if n.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"the channel list names {', '.join(repeated)} more than once; "
                         "give each channel once.")
    return names


@dataclass
class _Source:
    path: str
    dataset: gdal.Dataset
    band: int
    channel: str


@dataclass
class BuildStackResult:
    output: str
    channels: list[str]
    sources: dict[str, str]  # channel -> "file:band"


def _find_channels(card: ModelCard | ChannelList, rasters: list[str], what: str,
                   feedback: Feedback, input_bands: InputBands | None = None) -> list[_Source]:
    """Each channel's source band, by band name (:func:`.bandnames.band_channels`: ``B2``
    is ``S2:B02``). ``input_bands`` names the bands of the first raster instead of its
    descriptions."""
    if not rasters:
        raise InputError("no input raster given; choose the rasters that hold the model's "
                         "channels (the Sentinel-2 stack, OSM and height rasters ...).")
    found: dict[str, _Source] = {}
    available = []
    for index, path in enumerate(rasters):
        ds = open_raster(path)
        given = input_bands if index == 0 else None
        names = band_channels(ds, path, given, feedback)
        shown = names if given else band_descriptions(ds)  # as the user wrote them
        for number, name in enumerate(names, start=1):
            why = "skipped" if given else "no description"
            available.append(f"{shown[number - 1] or f'band {number} ({why})'} "
                             f"({os.path.basename(path)})")
            if name in card.channels and name not in found:
                found[name] = _Source(path, ds, number, name)
            elif name in card.channels:
                feedback.info(f"{name} is in both {os.path.basename(found[name].path)} and "
                              f"{os.path.basename(path)}; using the first.")
    missing = [c for c in card.channels if c not in found]
    if missing:
        raise InputError(
            f"the rasters do not provide every channel {what} "
            f"needs. Missing: {', '.join(missing)}. Available: {'; '.join(available)}. Make "
            f"them with lcz:stacksentinel2 (S2:*), lcz:rasterizeosm (OSM:*) or lcz:preparedsm "
            f"(DSM:height), or set the band descriptions of your own rasters to these names "
            f"(bare Sentinel-2 ids such as B2 or B02 count as S2:B02), or name the bands of "
            f"the first raster with INPUT_BANDS (its bands' names in order, or a preset: "
            f"{', '.join(p.name for p in PRESETS)}).")
    return [found[c] for c in card.channels]


def _check_grid(sources: list[_Source], card: ModelCard) -> None:
    first = sources[0]
    check_georeferencing(first.dataset, first.path)
    grid = grid_of(first.dataset)
    if card.pixel_size and abs(grid.pixel - card.pixel_size) > 0.01 * card.pixel_size:
        raise InputError(
            f"{first.path} has {grid.pixel:g} m pixels, but the model was trained on "
            f"{card.pixel_size:g} m pixels. Stack Sentinel-2 at 10 m with lcz:stacksentinel2, "
            f"or resample (gdalwarp -tr {card.pixel_size:g} {card.pixel_size:g}).")
    for source in sources[1:]:
        if source.path == first.path:
            continue
        check_georeferencing(source.dataset, source.path)
        other = grid_of(source.dataset)
        if other.same_as(grid):
            continue
        problems = []
        if not other.srs.IsSame(grid.srs):
            problems.append(f"CRS {other.srs.GetName()} instead of {grid.srs.GetName()}")
        if abs(other.pixel - grid.pixel) > 1e-6 * grid.pixel:
            problems.append(f"{other.pixel:g} m pixels instead of {grid.pixel:g} m")
        if (other.width, other.height) != (grid.width, grid.height):
            problems.append(f"{other.width} x {other.height} pixels instead of "
                            f"{grid.width} x {grid.height}")
        if abs(other.x0 - grid.x0) > 1e-3 or abs(other.y0 - grid.y0) > 1e-3:
            problems.append(f"origin ({other.x0:.2f}, {other.y0:.2f}) instead of "
                            f"({grid.x0:.2f}, {grid.y0:.2f})")
        raise InputError(
            f"{source.path} (channel {source.channel}) is not on the grid of {first.path}: "
            f"{'; '.join(problems)}. Every channel must align pixel for pixel: make the "
            f"ancillary layers with lcz:rasterizeosm / lcz:preparedsm using the Sentinel-2 "
            f"stack as the reference raster, or warp them onto it (gdalwarp -te -tr -t_srs).")


def _sources(sources: list[_Source]) -> str:
    """The user's files behind the channels (see :func:`~..stacks.sources_of`)."""
    return sources_of_all((source.dataset, source.path) for source in sources)


def _write_vrt(sources: list[_Source], output: str, card: ModelCard,
               pending: PendingOutputs) -> None:
    first = sources[0].dataset
    grid = grid_of(first)
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">',
             f"  <SRS>{html.escape(grid.wkt)}</SRS>",
             "  <GeoTransform>" + ", ".join(repr(v) for v in grid.geotransform)
             + "</GeoTransform>",
             "  <Metadata>",
             f'    <MDI key="LCZ_MODEL">{html.escape(card.describe())}</MDI>',
             f'    <MDI key="{SOURCES}">{html.escape(_sources(sources))}</MDI>',
             "  </Metadata>"]
    for number, source in enumerate(sources, start=1):
        band = source.dataset.GetRasterBand(source.band)
        data_type = gdal.GetDataTypeName(band.DataType)
        nodata = band.GetNoDataValue()
        x_block, y_block = band.GetBlockSize()
        lines += [f'  <VRTRasterBand dataType="{data_type}" band="{number}">',
                  f"    <Description>{html.escape(source.channel)}</Description>"]
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        lines += ["    <SimpleSource>",
                  f'      <SourceFilename relativeToVRT="0">'
                  f"{html.escape(os.path.abspath(source.path))}</SourceFilename>",
                  f"      <SourceBand>{source.band}</SourceBand>",
                  f'      <SourceProperties RasterXSize="{grid.width}" '
                  f'RasterYSize="{grid.height}" DataType="{data_type}" '
                  f'BlockXSize="{x_block}" BlockYSize="{y_block}"/>',
                  f'      <SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"/>',
                  f'      <DstRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"/>',
                  "    </SimpleSource>", "  </VRTRasterBand>"]
    lines.append("</VRTDataset>")
    pending.files.write_text(output, "\n".join(lines) + "\n", "model input stack")


def _write_tif(sources: list[_Source], output: str, card: ModelCard, feedback: Feedback,
               pending: PendingOutputs) -> None:
    bands = [s.dataset.GetRasterBand(s.band) for s in sources]
    types = {b.DataType for b in bands}
    nodatas = {b.GetNoDataValue() for b in bands}
    keep = len(types) == 1 and len(nodatas) == 1
    data_type = types.pop() if keep else gdal.GDT_Float32
    nodata = nodatas.pop() if keep else FLOAT_NODATA
    grid = grid_of(sources[0].dataset)
    with bounded_cache():
        options = TILED + (["PREDICTOR=3"] if data_type == gdal.GDT_Float32 else [])
        pending.create("stack", output, width=grid.width, height=grid.height,
                       bands=len(sources), data_type=data_type,
                       geotransform=grid.geotransform, projection=grid.wkt,
                       block_rows=256, nodata=nodata if nodata is not None else 0,
                       descriptions=[s.channel for s in sources],
                       metadata={"LCZ_MODEL": card.describe(), SOURCES: _sources(sources)},
                       creation_options=options)
        if nodata is None:
            for number in range(1, len(sources) + 1):
                pending.band("stack", number).DeleteNoDataValue()
        blocks = list(row_blocks(grid.height, 128))
        feedback.info(f"Copying {len(sources)} channel(s) in {len(blocks)} block(s) of up to "
                      f"128 rows ...")
        for count, (row0, rows) in enumerate(blocks):
            check_cancel(feedback)
            block = []
            for source, band in zip(sources, bands):
                data = band.ReadAsArray(0, row0, grid.width, rows)
                if data is None:
                    raise InputError(f"reading {source.path} failed: "
                                     f"{gdal.GetLastErrorMsg()}.")
                if not keep:
                    own = band.GetNoDataValue()
                    data = data.astype(np.float32)
                    invalid = np.isnan(data)
                    if own is not None:
                        invalid |= data == np.float32(own)
                    data[invalid] = FLOAT_NODATA
                block.append(data)
            pending.write("stack", np.stack(block), row0)
            feedback.progress(100.0 * (count + 1) / len(blocks))


def build_stack(model: str | None, rasters: list[str], output: str,
                feedback: Feedback | None = None,
                channels: list[str] | None = None, input_bands=None) -> BuildStackResult:
    """Write exactly the model's channels, in its order, from ``rasters`` to ``output``
    (``.vrt`` or ``.tif``). Without a model, ``channels`` names the bands to stack (a training
    stack, before any model exists). ``input_bands`` (INPUT_BANDS: a preset or the names in
    order, see :func:`.bandnames.parse_input_bands`) names the bands of the first raster;
    the output's band descriptions are the channel names either way."""
    feedback = feedback or Feedback()
    output = os.fspath(output)
    if not output.lower().endswith((".vrt", ".tif", ".tiff")):
        raise InputError(f"the output {output} must be a GeoTIFF (.tif) or a VRT (.vrt).")
    if model and channels:
        raise InputError("give either a model or a channel list, not both: the model's "
                         "metadata already fixes the channels and their order.")
    if model:
        card = read_model_card(model)
    elif channels:
        card = ChannelList([canonical_channel(c) for c in channels])
    else:
        raise InputError("give a model (.onnx) whose channels to stack (MODEL), or a channel "
                         "list (CHANNEL_LIST) such as "
                         "'S2:B02,S2:B03,...,OSM:building_fraction,DSM:height'.")
    what = f"the model {os.path.basename(model)}" if model else "the channel list"
    feedback.info(f"Reading the band names of {describe_files(rasters)} ...")
    sources = _find_channels(card, [os.fspath(r) for r in rasters], what, feedback,
                             parse_input_bands(input_bands))
    _check_grid(sources, card)
    pending = PendingOutputs(os.path.dirname(os.path.abspath(output)),
                             inputs=[os.fspath(r) for r in rasters] + ([model] if model else []))
    pending.reserve("stack", output, "model input stack")
    feedback.info(f"{card.describe()}: " + ", ".join(
        f"{s.channel} <- {os.path.basename(s.path)} band {s.band}" for s in sources))
    try:
        if output.lower().endswith(".vrt"):
            _write_vrt(sources, output, card, pending)
        else:
            _write_tif(sources, output, card, feedback, pending)
        pending.commit(feedback)
    except BaseException:
        pending.discard()
        raise
    return BuildStackResult(output=output, channels=list(card.channels),
                            sources={s.channel: f"{s.path}:{s.band}" for s in sources})
