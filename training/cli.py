"""Command line of the training package: ``python -m training <command> --help``.

Commands: summary, train, export, evaluate, compare, calibrate, check-precision,
convert-keras, forest.
A bad input ends with one readable line on stderr and exit status 2, never a traceback;
Ctrl+C or SIGTERM with "cancelled; no output was written" and exit status 130.
"""

from __future__ import annotations

import argparse
import json
import sys


def _csv_list(text: str | None, kind=str):
    if text is None:
        return None
    return [kind(v.strip()) for v in text.split(",") if v.strip()]


def _add_train(sub):
    from .config import add_options
    p = sub.add_parser("train", help="train a model (config file + overrides)",
                       description="Train an LCZ model. Defaults: the MSMLA paper's setup "
                       "(Adam lr 0.002, Keras decay 0.004 per iteration, batch 32, early stop "
                       "15). Values: defaults < --setup < --config file < options.")
    p.add_argument("--config", help="JSON or TOML file of training options")
    p.add_argument("--resume", help="checkpoint (last.pt) to continue from")
    add_options(p)  # one per field of training.config.TrainConfig


def _add_config_options(p, names) -> None:
    """Options of :class:`training.config.TrainConfig` (help, type, default from there)."""
    from .config import TrainConfig
    for name in names:
        f = TrainConfig.fields()[name]
        p.add_argument("--" + name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f.metadata["help"])


def _add_precision_options(p, calibration_default: str) -> None:
    p.add_argument("--precisions", default="bfloat16,int8",
                   help="comma-separated reduced precisions to check: bfloat16 (where the CPU "
                        "runs it), int8 (writes MODEL.int8.onnx, a calibrated QDQ copy, "
                        "beside the model); default bfloat16,int8")
    p.add_argument("--calibration-data",
                   help=f"patches that set the int8 activation ranges (default: "
                        f"{calibration_default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training",
                                     description="LCZ training package (PyTorch).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="parameter counts of a model")
    p.add_argument("--model", required=True)
    p.add_argument("--channels", type=int, default=10)
    p.add_argument("--patch", type=int, default=48, help="patch (unet: tile) edge in pixels")
    p.add_argument("--cbam", default="faithful", choices=["faithful", "paper"])
    _add_config_options(p, ("depth", "width", "output_stride"))

    _add_train(sub)

    p = sub.add_parser("export", help="checkpoint → plugin-ready ONNX (parity checked)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--version")
    p.add_argument("--precision-data", default="auto",
                   help="patches for the bfloat16 and int8 checks recorded in the card "
                        "(default: the run's validation data)")
    p.add_argument("--no-precision-check", dest="precision_data", action="store_const",
                   const=None, help="do not compare bfloat16 or int8 with float32 (and write "
                                    "no int8 variant)")
    _add_precision_options(p, "the run's training data")

    p = sub.add_parser("check-precision",
                       help="measure bfloat16 and a calibrated int8 variant against float32 "
                            "on patches; record them in the model card (lets lcz:classify's "
                            "Automatic device use them where they are the fastest)")
    p.add_argument("--model", required=True, help="exported .onnx")
    p.add_argument("--data", required=True, help="patches (So2Sat h5 or patch file); a tile "
                                                 "file for a dense model")
    p.add_argument("--out", help="write the model here (default: in place); the int8 variant "
                                 "goes beside it")
    p.add_argument("--limit", type=int, default=4096,
                   help="patches (dense: tiles) compared (default 4096)")
    _add_precision_options(p, "the training data the model card names, else --data")

    p = sub.add_parser("evaluate", help="LCZ metrics of a model on test patches (a dense "
                                        "model: on tiles, per cell and per pixel)")
    p.add_argument("--model", required=True, help=".onnx or checkpoint .pt")
    p.add_argument("--data", required=True, help="So2Sat h5 or patch file (path#test); a "
                                                 "tile file for a dense model")
    p.add_argument("--out", required=True, help="folder for the report, CSV and PNGs")
    p.add_argument("--name")
    p.add_argument("--bins", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N patches (dense: "
                                                        "tiles) only")

    p = sub.add_parser("compare", help="markdown table of several evaluate reports")
    p.add_argument("reports", nargs="+", help="report.json files or evaluate folders")
    p.add_argument("--out", help="write the table here (default: print)")

    p = sub.add_parser("calibrate", help="fit temperature scaling on validation patches (a "
                                         "dense model: on the logits of labelled pixels)")
    p.add_argument("--model", required=True, help="exported .onnx")
    p.add_argument("--data", required=True, help="validation patches (dense: tiles)")
    p.add_argument("--out", required=True, help="calibrated .onnx (may equal --model)")
    p.add_argument("--bins", type=int, default=15)

    p = sub.add_parser("convert-keras", help="published Keras weights → plugin-ready ONNX")
    p.add_argument("--weights", required=True, help="Keras .h5/.hdf5 weight file")
    p.add_argument("--out", required=True, help="output .onnx")
    p.add_argument("--model", choices=["sen2lcz", "resnet20"],
                   help="architecture (detected from the file when omitted)")
    p.add_argument("--torch-out", help="also save the PyTorch state dict here")

    p = sub.add_parser("forest", help="random-forest baseline on per-patch features → ONNX")
    p.add_argument("--train", required=True)
    p.add_argument("--out", required=True, help="output .onnx")
    p.add_argument("--channels")
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--max-samples", type=int, default=0,
                   help="train on at most this many patches (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    return parser


def run(args) -> int:
    if args.command == "summary":
        from .summary import summary
        print(summary(args.model, args.channels, args.patch, args.cbam, args.depth, args.width,
                      args.output_stride))
    elif args.command == "train":
        from .config import given_options
        from .train import load_checkpoint, load_config_file, make_config, train
        file_values = load_config_file(args.config) if args.config else {}
        if args.resume and not args.config:
            file_values = load_checkpoint(args.resume)["config"]
        result = train(make_config(file_values, given_options(args)), resume=args.resume)
        if result["rank"] == 0:
            runs = result["epochs"]
            print(f"best checkpoint: {result['best']} (validation loss "
                  f"{result['best_val_loss']:.4f}; {runs} epoch{'s' if runs != 1 else ''} run)")
    elif args.command == "export":
        from .export import export_checkpoint
        print(export_checkpoint(args.checkpoint, args.out, args.temperature, args.version,
                                args.precision_data, precisions=_csv_list(args.precisions),
                                calibration_data=args.calibration_data or "auto"))
    elif args.command == "evaluate":
        from .evaluate import comparison_table, evaluate
        report = evaluate(args.model, args.data, args.out, args.name, args.bins,
                          args.batch_size, args.limit)
        print(comparison_table([report]), end="")
    elif args.command == "compare":
        from .evaluate import compare
        table = compare(args.reports)
        if args.out:
            from lcz_qgis_plugin.core.commit import Commit
            with Commit(inputs=args.reports) as files:
                files.write_text(args.out, table, "comparison table")
        print(table, end="")
    elif args.command == "calibrate":
        from .evaluate import calibrate
        result = calibrate(args.model, args.data, args.out, args.bins)
        print(f"temperature {result['temperature']:.4f}: ECE {100 * result['ece_before']:.2f} % "
              f"-> {100 * result['ece_after']:.2f} % on {result['samples']} "
              f"{result.get('unit', 'patches')}; "
              f"written {args.out}")
        if result.get("note"):
            print(f"note: {result['note']}")
    elif args.command == "check-precision":
        from .precision import check_precision
        print(check_precision(args.model, args.data, args.out, args.limit,
                              tuple(_csv_list(args.precisions)), args.calibration_data))
    elif args.command == "convert-keras":
        from .convert_keras import convert_keras
        path, card = convert_keras(args.weights, args.out, args.model, args.torch_out)
        print(f"{path}: {card.describe()}, output {card.output_kind}")
    elif args.command == "forest":
        from .forest import train_forest
        result = train_forest(args.train, args.out, _csv_list(args.channels), args.trees,
                              args.max_samples, args.seed)
        print(json.dumps(result))
    return 0


def _known_errors():
    from lcz_qgis_plugin.core.errors import LczError

    from .datasets import DataError
    from .evaluate import EvaluationError
    from .export import ExportError
    from .keras_weights import KerasWeightsError
    from .train import TrainingError
    return (LczError, DataError, EvaluationError, ExportError, KerasWeightsError, TrainingError)


def main(argv=None) -> int:
    """Runs one command. Ctrl+C and SIGTERM stop it like a cancel (a second one stops at
    once): the outputs being written are discarded, and the line "cancelled; no output was
    written" and exit status 130 follow. Errors: one line and exit status 2."""
    from lcz_qgis_plugin.core.interrupt import (
        CANCELLED,
        CANCELLED_EXIT_STATUS,
        cancel_on_signals,
        raise_keyboard_interrupt,
    )
    args = build_parser().parse_args(argv)
    try:
        with cancel_on_signals(raise_keyboard_interrupt):
            return run(args)
    except KeyboardInterrupt:
        print(CANCELLED, file=sys.stderr)
        return CANCELLED_EXIT_STATUS
    except _known_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 (one line, never a traceback)
        print(f"error: unexpected {type(exc).__name__}: {exc}. Please report it with the "
              f"command line that led to it.", file=sys.stderr)
        return 2
