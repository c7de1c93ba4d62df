"""Vocoders. `Generator` is the NSF-HiFiGAN inside the synthesizer (`vdecoder.nsf_hifigan`); `NsfHifiGan`
is the standalone mel vocoder folder used by shallow diffusion and the enhancer (`vdecoder.vocoder`).
"""
from vdecoder.nsf_hifigan import Generator, GeneratorConfig
from vdecoder.vocoder import NsfHifiGan, VocoderMel, read_vocoder_config, save_vocoder_folder

__all__ = ["Generator", "GeneratorConfig", "NsfHifiGan", "VocoderMel", "read_vocoder_config", "save_vocoder_folder"]
