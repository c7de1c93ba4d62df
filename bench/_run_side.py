"""One synthesizer measurement in a fresh process, for `python -m bench.infer --original PATH`.

Run as a script: `python bench/_run_side.py SIDE ROOT G_FILE CONFIG INPUTS THREADS DEVICE OUT_AUDIO`, or with
only `SIDE ROOT G_FILE CONFIG` to load the model and print its `weights` digests (bench.convert). It is
imported only for its two helpers: `_import_root` (bench/_train_side.py) and `state_digests` (also
bench.infer and bench.train, to check what a side loaded).
SIDE is "ours" or "original"; ROOT is the folder whose `models.py` and packages are imported. Both
projects have top-level packages of the same names (`modules`, `vdecoder`, ...), so each side runs in
its own process with only its own root on the import path.

- original: a so-vits-svc 4.1 checkout, loaded the way its inference loads a model
  (`utils.get_hparams_from_file`, `SynthesizerTrn(spec_channels, segment_frames, **hps.model)`,
  `utils.load_checkpoint(path, model, None)`, eval mode), then `net_g.infer(c, f0, uv, g=sid,
  noice_scale=0.4)`, which returns (audio [1, 1, samples], f0);
- ours: `SvcEngine.load(G_FILE, CONFIG)` and `engine.synthesize` (chunked flow and decoder).

INPUTS is an .npz with units c [1, ssl_dim, T], f0 [1, T] and uv [1, T] (the same for both sides). Both
sides run one short warm-up first. DEVICE is "cpu" or a CUDA device; on CUDA the timing waits for the
GPU to finish and the peak is torch's largest allocation on it. Prints one line `RESULT {json}` (seconds,
peak memory in MB: resident memory on the CPU; for the
original also `weights`, a digest per tensor of the loaded model, see `state_digests`: the checkout's
loader keeps the fresh initialisation of any tensor the file lacks or shapes differently, with a mere
print, so the caller compares these with the file); with OUT_AUDIO other than "-", also saves the audio
there (.npy) so the caller can compare the two.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time


def _import_root(root: str) -> None:
    """Put `root` first on the import path and drop this script's folder and our project root."""
    here = os.path.dirname(os.path.abspath(__file__))
    ours = os.path.dirname(here)
    sys.path[:] = [root] + [p for p in sys.path if os.path.abspath(p or ".") not in (here, ours)]


def state_digests(state) -> dict[str, str]:
    """A short content digest (dtype, shape and bytes) per tensor of a state dict, by name.

    Used in both kinds of process (this file imports nothing of either project), so the caller can check
    that a side's network holds exactly the tensors of a checkpoint file.
    """
    import hashlib

    import torch

    digests = {}
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h = hashlib.sha256(f"{t.dtype} {tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy())  # a view: no copy of the weights
        digests[name] = h.hexdigest()[:16]
    return digests


def _original(root: str, g_file: str, config: str, device):
    import torch
    import utils  # the checkout's utils.py

    from models import SynthesizerTrn  # the checkout's models.py

    hps = utils.get_hparams_from_file(config)
    net_g = SynthesizerTrn(hps.data.filter_length // 2 + 1, hps.train.segment_size // hps.data.hop_length,
                           **hps.model)
    utils.load_checkpoint(g_file, net_g, None)
    net_g.eval()
    digests = state_digests(net_g.state_dict())
    net_g.to(device)
    sid = torch.LongTensor([[0]]).to(device)

    def run(c, f0, uv):
        with torch.no_grad():
            audio, _ = net_g.infer(c, f0, uv, g=sid, noice_scale=0.4)
        return audio

    return run, {"weights": digests}


def _ours(root: str, g_file: str, config: str, device):
    from modules.inference import PieceFeatures, SvcEngine

    engine = SvcEngine.load(g_file, config, device=str(device), encoder=object())
    g = engine.speaker_condition(0)

    def run(c, f0, uv):
        audio, _ = engine.synthesize(PieceFeatures(c, f0, uv, None), g, noise_scale=0.4)
        return audio

    return run, {}


def main(argv: list[str]) -> int:
    if len(argv) == 4:  # SIDE ROOT G_FILE CONFIG: only load, and print the digests (bench.convert)
        side, root, g_file, config = argv
        _import_root(root)
        os.chdir(root)
        import torch

        _, info = (_original if side == "original" else _ours)(root, g_file, config, torch.device("cpu"))
        print("RESULT " + json.dumps({"side": side, **info}))
        return 0
    side, root, g_file, config, inputs, threads, device_name, out_audio = argv
    _import_root(root)
    os.chdir(root)
    import numpy as np
    import torch

    torch.set_num_threads(int(threads))
    device = torch.device(device_name)
    on_gpu = device.type == "cuda"
    data = np.load(inputs)
    c, f0, uv = (torch.from_numpy(data[k]).to(device) for k in ("c", "f0", "uv"))
    run, info = (_original if side == "original" else _ours)(root, g_file, config, device)
    warm = min(200, c.shape[-1])
    run(c[..., :warm], f0[:, :warm], uv[:, :warm])
    if on_gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    audio = run(c, f0, uv)
    if on_gpu:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if on_gpu:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    if out_audio != "-":
        np.save(out_audio, audio.float().reshape(-1).cpu().numpy())
    print("RESULT " + json.dumps({"side": side, "seconds_taken": round(elapsed, 3), "peak_mb": round(peak_mb),
                                  **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
