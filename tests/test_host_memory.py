"""Allocator settings (modules.host_memory) and decoder windows that stay below the mmap threshold."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from modules.config import HParams, load_template
from modules.host_memory import MMAP_THRESHOLD_MAX, _glibc
from modules.inference_chunked import decoder_values_per_frame, heap_window_frames
from tests.support.tiny_models import random_generator, tiny_config_dict

# Three 20 MiB buffers alive at once, then freed, five times over; counts the minor page faults of the
# last four rounds. By default glibc gives the freed 60 MiB back to the kernel (more than twice its
# adapted mmap threshold) and the next round faults every page in again.
_CYCLES = textwrap.dedent("""
    import json, resource, sys
    from modules.host_memory import reuse_freed_memory
    applied = reuse_freed_memory() if sys.argv[1] == "on" else None
    def cycle():
        bufs = [bytearray(20 * 2**20) for _ in range(3)]
        for b in bufs:
            b[::4096] = b"\\1" * len(b[::4096])
        del bufs
    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        cycle()
    print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
""")


@pytest.mark.skipif(_glibc() is None, reason="the settings exist only in glibc")
def test_freed_buffers_are_reused_instead_of_refaulted():
    def run(flag: str) -> dict:
        out = subprocess.run([sys.executable, "-c", _CYCLES, flag], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    off, on = run("off"), run("on")
    pages = 4 * 3 * 20 * 2**20 // 4096  # every page of every round
    assert on["applied"] is True
    assert off["faults"] > pages // 2  # the default really re-faults: the test can fail
    assert on["faults"] < pages // 20


_RELEASE = textwrap.dedent("""
    import json, os
    from modules.host_memory import release_freed_memory, reuse_freed_memory
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    reuse_freed_memory()
    bufs = [bytearray(20 * 2**20) for _ in range(3)]
    for b in bufs:
        b[::4096] = b"\\1" * len(b[::4096])
    del bufs
    kept = rss_mb()
    released = release_freed_memory()
    print(json.dumps({"kept": kept, "after": rss_mb(), "released": released}))
""")


@pytest.mark.skipif(_glibc() is None, reason="the settings exist only in glibc")
def test_kept_heap_memory_is_given_back_on_release():
    out = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["released"] is True
    assert result["kept"] - result["after"] > 30  # most of the 60 MiB freed but kept for reuse, now returned


def _max_activation_per_frame(gen: torch.nn.Module, frames: int, gin: int) -> float:
    """Largest output of any decoder module, in values per input frame (forward hooks)."""
    widest = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            widest[0] = max(widest[0], output[0].numel())

    handles = [m.register_forward_hook(hook) for m in gen.modules() if m is not gen]
    try:
        with torch.no_grad():
            z = torch.randn(1, gen.config.in_channels, frames)
            gen.synthesize(z, torch.zeros(1, 1, frames * gen.upp), torch.zeros(1, gin, 1))
    finally:
        for h in handles:
            h.remove()
    return widest[0] / frames


@pytest.mark.parametrize("variant", [{}, {"vocoder_name": "nsf-snake-hifigan"}])
def test_values_per_frame_match_the_decoders_widest_activation(variant):
    hps = HParams(**tiny_config_dict(variant))
    model = random_generator(hps, seed=1)
    measured = _max_activation_per_frame(model.dec, 6, hps.model.gin_channels)
    assert decoder_values_per_frame(hps.model) == measured


def test_default_windows_stay_below_the_mmap_threshold():
    hps = load_template()["model"]
    assert decoder_values_per_frame(hps) == 8192  # 128 ch x 64 samples (and every later stage) per frame
    kept = heap_window_frames(hps, margin=17)
    assert kept == 926
    assert (kept + 2 * 17) * 8192 * 4 <= MMAP_THRESHOLD_MAX * 15 // 16 < (kept + 1 + 2 * 17) * 8192 * 4
    snake = heap_window_frames({**hps, "vocoder_name": "nsf-snake-hifigan"}, margin=20)
    assert snake == 480 - 40


def test_cpu_engine_caps_its_windows():
    from modules.inference import SvcEngine

    hps = HParams(**tiny_config_dict({}))
    model = random_generator(hps, seed=2)
    engine = SvcEngine(model, hps, encoder=object(), chunk_frames=10**7)
    cap = heap_window_frames(hps.model, engine.rf.decoder)
    assert 1 < cap < 10**7
    assert engine.chunk_frames == cap
    assert SvcEngine(model, hps, encoder=object(), chunk_frames=24).chunk_frames == 24
