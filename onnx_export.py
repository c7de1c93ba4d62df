"""Export a trained model to ONNX for MoeSS / MoeVoiceStudio (flags as in so-vits-svc 4.1).

    python onnx_export.py -n NAME            # checkpoints/NAME/{model.pth, config.json} ->
                                             # checkpoints/NAME/NAME_SoVits.onnx + checkpoints/NAME.json
    python onnx_export.py -n NAME -m logs/44k/G_8000.pth -c logs/44k/config.json --check
    python onnx_export.py --diffusion -n NAME -m logs/44k/diffusion/model_X.pt [--check]
                                             # -> checkpoints/NAME/NAME_{encoder,denoise,pred,after}.onnx

A config with two or more speakers gives the speaker-mix graph (sid = per-frame weights [T, n_spk],
columns in the order of the config's spk map); otherwise sid is one speaker id. A vol input is added
when the model was trained with vol_embedding. The export uses torch's TorchScript exporter
(dynamo=False), the one that gives MoeSS's input names and dynamic axes. --check runs the exported
graph in onnxruntime and compares it with the PyTorch model. --index also writes the per-speaker faiss
indexes MoeSS reads.

--diffusion exports a shallow-diffusion model_*.pt instead (config.yaml next to it unless -c) as MoeSS's
four graphs: encoder (units, mel2ph, f0, volume[, spk_mix] -> condition), denoise, pred (one PLMS update)
and after (denormalised mel); the host runs the PLMS loop. Its --check runs that loop in onnxruntime
from fixed noise and compares the mel with the PyTorch pndm sampler. The logic lives in
modules.onnx_export, modules.onnx_diffusion and modules.onnx_index.
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
                   help="any G_*.pth to export instead of checkpoints/NAME/model.pth; with --diffusion the "
                        "model_*.pt to export (required)")
    p.add_argument("-c", "--config_path", default=None,
                   help="the config.json the model was trained with, instead of checkpoints/NAME/config.json; "
                        "with --diffusion the diffusion config.yaml (default: config.yaml next to -m)")
    p.add_argument("-o", "--output_dir", default="checkpoints",
                   help="folder that receives NAME/NAME_SoVits.onnx and NAME.json (default checkpoints)")
    p.add_argument("--index", default=None,
                   help="a feature_and_index.pkl (train_index.py) to write as NAME/Index-<speaker id>.index "
                        "(faiss files for MoeSS's feature retrieval)")
    p.add_argument("--check", action="store_true",
                   help="verify the file: onnx.checker, then onnxruntime vs PyTorch at two other lengths "
                        f"(fails when the largest difference exceeds {MAX_RELATIVE_ERROR:g} of the peak)")
    p.add_argument("--diffusion", action="store_true",
                   help="export a diffusion model_*.pt (-m) as NAME/NAME_{encoder,denoise,pred,after}.onnx "
                        "instead of a so-vits model")
    p.add_argument("--k_step", type=int, default=None,
                   help="with --diffusion --check: diffusion steps of the checked PLMS run, starting from noise "
                        "(default the model's k_step_max)")
    p.add_argument("--speedup", type=int, default=None,
                   help="with --diffusion --check: step stride of the checked PLMS run (default the config's "
                        "infer.speedup)")
    return p


def _report_checks(checks: list, what: object) -> None:
    worst = 0.0
    for check in checks:
        print(f"check T={check.frames}: max |onnx - torch| = {check.max_abs_error:.3g} "
              f"({check.relative_error:.3g} of the peak {check.peak:.3g})")
        worst = max(worst, check.relative_error)
    if checks:
        if worst > MAX_RELATIVE_ERROR:
            raise InferenceError(f"{what}: onnxruntime differs from PyTorch by {worst:.3g} of the peak "
                                 f"(limit {MAX_RELATIVE_ERROR:g})")
        print("check passed: onnx.checker ok, onnxruntime equals PyTorch")


def _run_diffusion(args: argparse.Namespace, name: str) -> int:
    from modules.onnx_diffusion import export_diffusion_model

    if not args.model_path:
        raise InferenceError("--diffusion needs -m: the diffusion model_*.pt to export")
    if args.index:
        raise InferenceError("--index belongs to the so-vits export; run it without --diffusion")
    model_path = Path(args.model_path)
    config_path = Path(args.config_path) if args.config_path else model_path.with_name("config.yaml")
    result = export_diffusion_model(model_path, config_path, Path(args.output_dir) / name, name, check=args.check,
                                    k_step=args.k_step, speedup=args.speedup)
    print(f"wrote {', '.join(str(p) for p in result.paths.values())} "
          f"({'speaker-mix' if result.mix else 'single-speaker'} encoder, {result.seconds:.1f} s)")
    if result.checks:
        print(f"check: PLMS from noise, k_step {result.k_step}, speedup {result.speedup}")
    _report_checks(result.checks, Path(args.output_dir) / name / f"{name}_*.onnx")
    return 0


def _run(args: argparse.Namespace) -> int:
    from modules.onnx_export import export_model

    name = args.model_name
    if not name or Path(name).name != name:
        raise InferenceError(f"-n '{name}' must be a plain project name (no folders)")
    if args.diffusion:
        return _run_diffusion(args, name)
    if args.k_step is not None or args.speedup is not None:
        raise InferenceError("--k_step and --speedup apply to --diffusion only")
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
    _report_checks(result.checks, result.onnx_path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
