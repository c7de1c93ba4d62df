"""Export a trained model to ONNX for MoeSS / MoeVoiceStudio (flags as in so-vits-svc 4.1).

    python onnx_export.py -n NAME            # checkpoints/NAME/{model.pth, config.json} ->
                                             # checkpoints/NAME/NAME_SoVits.onnx + checkpoints/NAME.json
    python onnx_export.py -n NAME -m logs/44k/G_8000.pth -c logs/44k/config.json --check

A config with two or more speakers gives the speaker-mix graph (sid = per-frame weights [T, n_spk],
columns in the order of the config's spk map); otherwise sid is one speaker id. A vol input is added
when the model was trained with vol_embedding. The export uses torch's TorchScript exporter
(dynamo=False), the one that gives MoeSS's input names and dynamic axes. --check runs the exported
graph in onnxruntime and compares it with the PyTorch model. --index also writes the per-speaker faiss
indexes MoeSS reads. The logic lives in modules.onnx_export and modules.onnx_index.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from modules.cli import run_cli
from modules.errors import InferenceError

logger = logging.getLogger("onnx_export")

MAX_RELATIVE_ERROR = 1e-4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnx_export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--model_name", default="TransformerFlow",
                   help="project name: reads checkpoints/NAME/model.pth and config.json, writes "
                        "NAME/NAME_SoVits.onnx and NAME.json under the output folder (default TransformerFlow)")
    p.add_argument("-m", "--model_path", default=None,
                   help="any G_*.pth to export instead of checkpoints/NAME/model.pth")
    p.add_argument("-c", "--config_path", default=None,
                   help="the config.json the model was trained with, instead of checkpoints/NAME/config.json")
    p.add_argument("-o", "--output_dir", default="checkpoints",
                   help="folder that receives NAME/NAME_SoVits.onnx and NAME.json (default checkpoints)")
    p.add_argument("--index", default=None,
                   help="a feature_and_index.pkl (train_index.py) to write as NAME/Index-<speaker id>.index "
                        "(faiss files for MoeSS's feature retrieval)")
    p.add_argument("--check", action="store_true",
                   help="verify the file: onnx.checker, then onnxruntime vs PyTorch at two other lengths "
                        f"(fails when the largest difference exceeds {MAX_RELATIVE_ERROR:g} of the peak)")
    return p


def _run(args: argparse.Namespace) -> int:
    from modules.onnx_export import export_model

    name = args.model_name
    if not name or Path(name).name != name:
        raise InferenceError(f"-n '{name}' must be a plain project name (no folders)")
    source = Path("checkpoints") / name
    model_path = Path(args.model_path) if args.model_path else source / "model.pth"
    config_path = Path(args.config_path) if args.config_path else source / "config.json"
    out = Path(args.output_dir)
    result = export_model(model_path, config_path, out / name / f"{name}_SoVits.onnx", out / f"{name}.json",
                          name=name, check=args.check)
    print(f"wrote {result.onnx_path} ({'speaker-mix' if result.mix else 'single-speaker'} graph, "
          f"{result.seconds:.1f} s) and {result.json_path}")
    if args.index:
        from modules.onnx_index import export_feature_indexes

        written = export_feature_indexes(args.index, out / name)
        print(f"wrote {len(written)} feature index(es): " + ", ".join(p.name for p in written))
    worst = 0.0
    for check in result.checks:
        print(f"check T={check.frames}: max |onnx - torch| = {check.max_abs_error:.3g} "
              f"({check.relative_error:.3g} of the peak {check.peak:.3g})")
        worst = max(worst, check.relative_error)
    if result.checks:
        if worst > MAX_RELATIVE_ERROR:
            raise InferenceError(f"{result.onnx_path}: onnxruntime differs from PyTorch by {worst:.3g} of the peak "
                                 f"(limit {MAX_RELATIVE_ERROR:g})")
        print("check passed: onnx.checker ok, onnxruntime equals PyTorch")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
