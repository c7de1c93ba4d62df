"""Mel diffusion for shallow diffusion (so-vits-svc 4.1 `model_*.pt` compatible).

`unit2mel.py`: Unit2Mel and GaussianDiffusion (strict 4.1 key layout); `wavenet.py`: the denoiser;
`samplers.py`: ddim, pndm, dpm-solver(++), unipc and ancestral sampling; `data.py` and `train.py`:
the training set and loop behind train_diff.py. The inference step is modules/diffusion_infer.py.
"""
