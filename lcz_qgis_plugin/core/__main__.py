"""Command line for the QGIS-free core, for scripts and machines without QGIS.

    python -m lcz_qgis_plugin.core classify --input stack.tif --model m.onnx --output lcz.tif
    python -m lcz_qgis_plugin.core classify-tiles --input country.vrt --model m.onnx --out map/
    python -m lcz_qgis_plugin.core model-info m.onnx
    python -m lcz_qgis_plugin.core clean-partials FOLDER

Log lines go to stderr, with progress as a bar on a terminal and as a line every 10 % in a
log file or pipe. Errors print one line naming the problem and the fix, and exit with status 2.
Ctrl+C or SIGTERM cancels a run like the Processing cancel button (a second one stops at
once): the line "cancelled; no output was written" and exit status 130 (classify-tiles keeps
its finished tiles: "cancelled; N of M tiles are finished; run the same command again to
continue").
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .environment import keep_gdal_exception_mode
from .errors import Cancelled, LczError
from .feedback import ConsoleFeedback
from .inference.engine import DEVICES
from .interrupt import CANCELLED, CANCELLED_EXIT_STATUS, cancel_on_signals, raise_keyboard_interrupt


def _extent(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError("give the extent as xmin,ymin,xmax,ymax in the "
                                         "stack's CRS")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcz_qgis_plugin.core",
                                     description="Local Climate Zone maps without QGIS.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("classify", help="classify input stack(s) with an ONNX model")
    run.add_argument("--input", action="append", required=True,
                     help="input stack; repeat for several dates of the same area")
    run.add_argument("--model", required=True, help=".onnx model with LCZ metadata")
    run.add_argument("--input-bands", metavar="NAMES",
                     help="names of the input's bands in order, instead of its band "
                          "descriptions: comma-separated (S2:B02 or B2, OSM:..., '-' skips a "
                          "band) or a preset: so2sat, s2-l1c-13, s2-l2a-12; applies to every "
                          "--input")
    run.add_argument("--output", required=True, help="LCZ map (.tif)")
    run.add_argument("--probabilities", help="optional class probabilities (.tif)")
    run.add_argument("--confidence", help="optional confidence (.tif)")
    run.add_argument("--fine", help="optional fine class map (.tif): every pixel's class, "
                                    "dense models only")
    run.add_argument("--cell-size", type=float, help="metres (default: the model's)")
    run.add_argument("--extent", type=_extent, help="xmin,ymin,xmax,ymax in the stack's CRS")
    run.add_argument("--device", choices=DEVICES, default="auto")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--majority-radius", type=int, default=0)
    run.add_argument("--threads", type=int, default=0)
    run.add_argument("--tile-size", type=int, default=0,
                     help="dense models: tile edge in pixels (default 0: automatic)")
    _add_classify_tiles(commands)
    info = commands.add_parser("model-info", help="print a model's LCZ metadata as JSON")
    info.add_argument("model")
    clean = commands.add_parser(
        "clean-partials", help="delete the temporary files that killed runs left in a folder",
        description="Delete the hidden temporary files (.NAME.lcz-partial-HOST-PID-...) that "
                    "runs stopped by SIGKILL or a power cut left in FOLDER; only those written "
                    "on this machine by processes that no longer run. The next run writing "
                    "into the folder does the same.")
    clean.add_argument("folder")
    args = parser.parse_args(argv)
    keep_gdal_exception_mode()
    feedback = ConsoleFeedback()
    try:
        # classify stops at its next batch, classify-tiles at its next wait for tiles; the
        # other commands are short: stop at once
        cancel = (feedback.cancel if args.command in ("classify", "classify-tiles")
                  else raise_keyboard_interrupt)
        with cancel_on_signals(cancel):
            try:
                return _run(args, feedback)
            finally:
                feedback.close()  # the progress bar ends before the result or error line
    except (Cancelled, KeyboardInterrupt) as exc:
        print(str(exc) if isinstance(exc, Cancelled) else CANCELLED, file=sys.stderr)
        return CANCELLED_EXIT_STATUS
    except LczError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 (one line, never a traceback)
        print(f"error: unexpected {type(exc).__name__}: {exc}. Please report it with the "
              f"command line that led to it.", file=sys.stderr)
        return 2


def _add_classify_tiles(commands) -> None:
    tiles = commands.add_parser(
        "classify-tiles", help="classify a large scene tile by tile on Dask (resumable)",
        description="Classify a large scene (a country) tile by tile on a Dask cluster: a "
                    "local one (--workers) or an existing one (--scheduler). Each tile is a "
                    "Cloud-Optimised GeoTIFF under OUT/tiles; OUT/lcz.vrt (and "
                    "probabilities.vrt, confidence.vrt) mosaic them. Run the same command "
                    "again after an interruption: finished tiles are kept (OUT/manifest.json "
                    "records them with their checksums) and only the others run.")
    tiles.add_argument("--input", action="append", required=True,
                       help="input stack or VRT mosaic; repeat for several dates")
    tiles.add_argument("--model", required=True, help=".onnx model with LCZ metadata")
    tiles.add_argument("--out", required=True, help="output folder (created when missing)")
    tiles.add_argument("--probabilities", action="store_true",
                       help="also write the class probabilities (probabilities.vrt)")
    tiles.add_argument("--confidence", action="store_true",
                       help="also write the confidence (confidence.vrt)")
    tiles.add_argument("--input-bands", metavar="NAMES",
                       help="names of the input's bands in order (as for classify)")
    tiles.add_argument("--cell-size", type=float, help="metres (default: the model's)")
    tiles.add_argument("--extent", type=_extent, help="xmin,ymin,xmax,ymax in the stack's CRS")
    tiles.add_argument("--tile-cells", type=int, default=512,
                       help="tile edge in output cells (default 512)")
    tiles.add_argument("--workers", type=int, default=2,
                       help="worker processes of the local cluster (default 2)")
    tiles.add_argument("--threads-per-worker", type=int, default=1,
                       help="tiles each local worker runs at a time (default 1)")
    tiles.add_argument("--scheduler", metavar="ADDRESS",
                       help="an existing Dask cluster's scheduler, e.g. tcp://host:8786 "
                            "(instead of a local cluster)")
    tiles.add_argument("--device", choices=DEVICES, default="auto")
    tiles.add_argument("--threads", type=int, default=0,
                       help="engine threads per tile (default 0: automatic)")
    tiles.add_argument("--batch-size", type=int, default=64)
    tiles.add_argument("--tile-size", type=int, default=0,
                       help="dense models: their own tile edge in pixels (default 0: "
                            "automatic)")
    tiles.add_argument("--restart", action="store_true",
                       help="classify every tile again, even when OUT holds a run of "
                            "another plan")


def _classify_tiles(args, feedback: ConsoleFeedback) -> int:
    from .inference.classify_tiles import classify_tiles
    result = classify_tiles(args.input, args.model, args.out, probabilities=args.probabilities,
                            confidence=args.confidence, cell_size=args.cell_size,
                            extent=args.extent, tile_cells=args.tile_cells,
                            workers=args.workers, threads_per_worker=args.threads_per_worker,
                            scheduler=args.scheduler, device=args.device, threads=args.threads,
                            batch_size=args.batch_size, input_bands=args.input_bands,
                            tile_size=args.tile_size or None, restart=args.restart,
                            feedback=feedback)
    print(json.dumps({"output": result.output, "probabilities": result.probabilities,
                      "confidence": result.confidence, "tiles": result.tiles,
                      "tiles_run": result.tiles_run, "tiles_skipped": result.tiles_skipped,
                      "cells": result.cells, "classified_cells": result.classified_cells,
                      "seconds": round(result.seconds, 1),
                      "dashboard": result.dashboard}))
    return 0


def _os_error(exc: OSError) -> str:
    from .commit import describe_os_error
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{describe_os_error(exc)}"


def _clean_partials(folder: str) -> int:
    from .commit import sweep_partials
    if not os.path.isdir(folder):
        raise LczError(f"{folder} is not a folder; give the folder the outputs were written "
                       f"to.")
    removed = sweep_partials(folder)
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} temporary file(s) of stopped runs removed from {folder}",
          file=sys.stderr)
    return 0


def _run(args, feedback: ConsoleFeedback) -> int:
    """The command itself; errors are turned into one line by :func:`main`."""
    if args.command == "clean-partials":
        return _clean_partials(args.folder)
    if args.command == "classify-tiles":
        return _classify_tiles(args, feedback)
    if args.command == "model-info":
        from .inference.engine import Engine
        engine = Engine(args.model, device="cpu")
        card = engine.card
        print(json.dumps({"file": args.model, "schema_version": card.schema_version,
                          "name": card.name, "version": card.version,
                          "channels": card.channels, "patch_size": card.patch_size,
                          "pixel_size": card.pixel_size, "cell_size": card.cell_size,
                          "class_codes": card.class_codes,
                          "output_kind": card.output_kind,
                          "temperature": card.temperature,
                          "provenance": card.provenance}, indent=2))
        return 0
    from .inference.classify import classify
    result = classify(args.input, args.model, args.output,
                      probabilities_output=args.probabilities,
                      confidence_output=args.confidence, cell_size=args.cell_size,
                      extent=args.extent, device=args.device, batch_size=args.batch_size,
                      majority_radius=args.majority_radius, threads=args.threads,
                      feedback=feedback, input_bands=args.input_bands,
                      fine_output=args.fine, tile_size=args.tile_size or None)
    print(json.dumps({"output": result.output, "probabilities": result.probabilities,
                      "confidence": result.confidence, "fine": result.fine,
                      "provider": result.provider,
                      "classified_cells": result.classified_cells,
                      "patches_per_second": round(result.patches_per_second, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
