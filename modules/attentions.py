"""Transformer blocks of the synthesizer: the bidirectional relative-position encoder (enc_p) and the
causal FFT stack (f0 decoder, transformer flow).

Parameter names (`emb_rel_k`, `conv_q`, `norm_layers_1`, `gamma`, ...) follow so-vits 4.1 so its
checkpoints load strictly.

Long inputs: a 10-minute song is ~52k frames, and a full [T, T] score matrix per head would need
tens of GB. Attention therefore runs over blocks of queries whenever T_q * T_k is above
`BLOCK_THRESHOLD`; each block still takes an exact softmax over *all* keys and adds the
relative-position terms for its own rows, so the result equals the one-shot computation.
Masks are built per block from per-position vectors, never as a full [T, T] tensor.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from modules.commons import fused_add_tanh_sigmoid_multiply, weight_norm
from modules.conv_layout import exporting
from modules.lean_autograd import Dropout, dropout_matmul, relu_dropout_conv

# Above this many score entries per (batch, head) the attention is computed in query blocks.
BLOCK_THRESHOLD = 2048 * 2048
# Score entries in one block, over all batch items and heads (query rows x all keys): 4 MiB of fp32, so a
# block's scores and probabilities stay in the CPU's last-level cache and well under glibc's mmap
# threshold (blocks of 32 MiB or more were fresh mmaps, zero-filled page by page, once per block and op).
BLOCK_ELEMENTS = 1 << 20
MASK_VALUE = -1e4
# Rows whose softmax denominator shrinks below this fraction of the fused kernel's are recomputed exactly
# (the relative-position correction subtracts; below 1/4 it could lose more than ~1e-6 relative).
FUSED_MIN_FACTOR = 0.25
# Inference runs an FFN over longer inputs in pieces of this many frames (plus the convolutions' context):
# its hidden activation for a 10-minute piece would be 159 MB, a fresh page-faulted mapping per layer.
FFN_CHUNK_FRAMES = 4096


class LayerNorm(nn.Module):
    """Channel LayerNorm for [B, C, T] tensors; parameters named gamma/beta like the original."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional windowed relative positions (keys and values), heads sharing
    one table of 2*window+1 embeddings.

    Masking is given as vectors: `x_mask` [B, 1, T] (position i may attend to j when both are valid)
    and/or `causal` (j <= i). Masked scores are set to -1e4, as in the original, not -inf.
    """

    def __init__(
        self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0,
        window_size: int | None = None, proximal_init: bool = False,
    ) -> None:
        super().__init__()
        if channels % n_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        if window_size is not None:
            std = self.k_channels ** -0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = Dropout(p_dropout)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)
        if proximal_init:
            with torch.no_grad():
                self.conv_k.weight.copy_(self.conv_q.weight)
                self.conv_k.bias.copy_(self.conv_q.bias)
        self.block_threshold = BLOCK_THRESHOLD
        self.block_elements = BLOCK_ELEMENTS

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, x_mask: torch.Tensor | None = None, causal: bool = False,
        block_size: int | None = None,
    ) -> torch.Tensor:
        """Queries from x [B, C, T_q], keys/values from c [B, C, T_k] -> [B, out, T_q].

        `block_size` forces query blocks of that many rows (None: automatic by length).
        """
        q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
        b, d, t_k = k.shape
        t_q = q.size(2)
        q = q.view(b, self.n_heads, self.k_channels, t_q).transpose(2, 3)
        k = k.view(b, self.n_heads, self.k_channels, t_k).transpose(2, 3)
        v = v.view(b, self.n_heads, self.k_channels, t_k).transpose(2, 3)
        q = q / math.sqrt(self.k_channels)
        automatic = block_size is None
        if block_size is None:
            block_size = t_q if t_q * t_k <= self.block_threshold else max(1, self.block_elements // (b * self.n_heads * t_k))
        key_valid = x_mask[:, 0, :].bool() if x_mask is not None else None
        out = None
        if block_size < t_q:
            # Every block reads all of v and its slice of q: make them contiguous once, not once per block
            # inside matmul. An all-valid mask (inference on one piece) would only cost passes over the scores.
            q, v = q.contiguous(), v.contiguous()
            if key_valid is not None and bool(key_valid.all()):
                key_valid = None
            if automatic and key_valid is None and not (self.training and self.drop.p > 0):
                out = self._attend_fused(q, k.contiguous(), v, causal)
        if out is None:
            out = self._attend_blocks(q, k, v, block_size, key_valid, causal)
        out = out.transpose(2, 3).contiguous().view(b, d, t_q)
        return self.conv_o(out)

    def _attend_blocks(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int,
        key_valid: torch.Tensor | None, causal: bool,
    ) -> torch.Tensor:
        outputs = []
        for start in range(0, q.size(2), block_size):
            outputs.append(self._attend_block(q[:, :, start:start + block_size], k, v, start, key_valid, causal))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    def _attend_fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor | None:
        """Long unmasked self-attention through torch's fused CPU kernel (online softmax over key blocks, no
        score matrix in memory), or None where that kernel does not apply.

        The kernel knows nothing of the relative-position terms, so they are added afterwards from its
        log-sum-exp: with Z0 the kernel's softmax denominator, the band's weights change from exp(s - lse)
        to exp(s + rel - lse) and the denominator from Z0 to Z0 * (1 - sum old + sum new). Rows where that
        factor is small (the band held most of the weight and the bias removes it) would lose precision in
        the subtraction, and rows where exp(s + rel - lse) overflows would give NaN; both are recomputed
        exactly with score blocks.
        """
        kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if kernel is None or q.device.type != "cpu" or q.size(2) != k.size(2):
            return None
        if causal and self.window_size is not None:
            return None
        out, lse = kernel(q, k, v, 0.0, causal, scale=1.0)
        if self.window_size is None:
            return out
        # The correction runs in fp32 even under bf16 autocast: it exponentiates differences of log-sums.
        dtype, t = out.dtype, q.size(2)
        q, k, v, out, lse = q.float(), k.float(), v.float(), out.float(), lse.float()
        # Row chunks keep every temporary of the correction near 4 MiB (reused heap, no fresh mmaps).
        rows_per_chunk = max(1, self.block_elements // (q.size(0) * q.size(1) * q.size(3)))
        unsafe = []
        for start in range(0, t, rows_per_chunk):
            stop = min(start + rows_per_chunk, t)
            out[:, :, start:stop], bad = self._band_correction(q, k, v, out, lse, start, stop)
            unsafe.extend((start + torch.nonzero(bad).flatten()).tolist())
        if len(unsafe) > t // 8:
            return None
        for i in unsafe:
            out[:, :, i:i + 1] = self._attend_block(q[:, :, i:i + 1], k, v, i, None, False)
        return out.to(dtype)

    def _band_correction(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
        start: int, stop: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows start..stop of the fused kernel's output with the relative-position terms added, and a bool
        [stop - start] of rows whose correction is not safe (see `_attend_fused`)."""
        w, t = self.window_size, k.size(2)
        lo, hi = max(0, start - w), min(t, stop + w)
        # Keys and values of rows start-w .. stop+w, zero-padded where those fall outside the sequence.
        k_near = F.pad(k[:, :, lo:hi], (0, 0, lo - (start - w), (stop + w) - hi))
        v_near = F.pad(v[:, :, lo:hi], (0, 0, lo - (start - w), (stop + w) - hi))
        q_rows, n = q[:, :, start:stop], stop - start
        s = torch.stack([(q_rows * k_near[:, :, r:r + n]).sum(-1) for r in range(2 * w + 1)], dim=-1)
        positions = torch.arange(start, stop, device=q.device).unsqueeze(1) + torch.arange(-w, w + 1, device=q.device)
        outside = (positions < 0) | (positions >= t)
        rel = torch.matmul(q_rows, self.emb_rel_k[0].float().transpose(0, 1))
        lse_rows = lse[:, :, start:stop].unsqueeze(-1)
        old = torch.exp(s - lse_rows).masked_fill(outside, 0.0)
        new = torch.exp(s + rel - lse_rows).masked_fill(outside, 0.0)
        factor = 1.0 - old.sum(-1, keepdim=True) + new.sum(-1, keepdim=True)
        delta = new - old
        rows = out[:, :, start:stop].clone()
        for r in range(2 * w + 1):
            rows.addcmul_(delta[..., r:r + 1], v_near[:, :, r:r + n])
        rows.div_(factor)
        rows.add_(torch.matmul(new / factor, self.emb_rel_v[0].float()))
        # Also rows where exp(s + rel - lse) overflowed (a huge positive bias): the score blocks subtract the max.
        safe = torch.isfinite(factor) & (factor >= FUSED_MIN_FACTOR)
        return rows, ~safe.squeeze(-1).all(dim=1).all(dim=0)

    def _attend_block(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
        key_valid: torch.Tensor | None, causal: bool,
    ) -> torch.Tensor:
        """Exact attention for query rows start..start+n over all keys. q is already scaled."""
        n, t_k = q.size(2), k.size(2)
        scores = torch.matmul(q, k.transpose(-2, -1))
        if self.window_size is not None:
            rel = torch.matmul(q, self.emb_rel_k[0].transpose(0, 1))  # [B, H, n, 2w+1]
            self._add_band(scores, rel, start)
        mask = self._block_mask(start, n, t_k, key_valid, causal, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, MASK_VALUE)
        out, p_attn = dropout_matmul(F.softmax(scores, dim=-1), v, self.drop)
        if self.window_size is not None:
            band = self._full_to_band(p_attn, start)
            out = out + torch.matmul(band, self.emb_rel_v[0])
        return out

    def _band_offsets(self, start: int, n: int, t_k: int) -> Iterator[tuple[int, int, int, int]]:
        """For each relative offset r in [-w, w]: (slot r + w, diagonal offset start + r, and the query rows
        lo..hi whose key start + i + r exists). Those keys form one diagonal of a [n, t_k] block, so the
        band is read and written through diagonal views: no index tensors, no boolean masks."""
        w = self.window_size
        for r in range(-w, w + 1):
            offset = start + r
            lo, hi = max(0, -offset), min(n, t_k - offset)
            if lo < hi:
                yield r + w, offset, lo, hi

    def _add_band(self, scores: torch.Tensor, rel: torch.Tensor, start: int) -> None:
        """Add band logits rel [B, H, n, 2w+1] to scores [B, H, n, t_k] at key columns i+r, in place."""
        for slot, offset, lo, hi in self._band_offsets(start, rel.size(2), scores.size(3)):
            scores.diagonal(offset, dim1=-2, dim2=-1).add_(rel[:, :, lo:hi, slot])

    def _full_to_band(self, p_attn: torch.Tensor, start: int) -> torch.Tensor:
        """Gather attention weights at key columns i+r into [B, H, n, 2w+1] (0 outside the sequence)."""
        band = p_attn.new_zeros(*p_attn.shape[:3], 2 * self.window_size + 1)
        for slot, offset, lo, hi in self._band_offsets(start, p_attn.size(2), p_attn.size(3)):
            band[:, :, lo:hi, slot] = p_attn.diagonal(offset, dim1=-2, dim2=-1)
        return band

    @staticmethod
    def _block_mask(
        start: int, n: int, t_k: int, key_valid: torch.Tensor | None, causal: bool, device: torch.device
    ) -> torch.Tensor | None:
        """Bool [B or 1, 1, n, t_k] of allowed (query, key) pairs, or None when all are allowed."""
        mask = None
        if key_valid is not None:
            query_valid = key_valid[:, start:start + n]
            mask = (query_valid.unsqueeze(2) & key_valid.unsqueeze(1)).unsqueeze(1)
        if causal:
            rows = torch.arange(start, start + n, device=device).unsqueeze(1)
            cols = torch.arange(t_k, device=device).unsqueeze(0)
            tri = (cols <= rows).view(1, 1, n, t_k)
            mask = tri if mask is None else (mask & tri)
        return mask


class FFN(nn.Module):
    """Two convolutions with ReLU; 'same' padding, or left padding (k-1) when causal."""

    def __init__(
        self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int,
        p_dropout: float = 0.0, causal: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.causal = causal
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = Dropout(p_dropout)

    def _padding(self) -> tuple[int, int]:
        if self.causal:
            return self.kernel_size - 1, 0
        return (self.kernel_size - 1) // 2, self.kernel_size // 2

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.kernel_size == 1 else F.pad(x, self._padding())

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        if not (self.training or torch.is_grad_enabled() or exporting()) and x.size(-1) > 2 * FFN_CHUNK_FRAMES:
            return self._forward_in_pieces(x, x_mask)
        return self._convolutions(x, x_mask) * x_mask

    def _convolutions(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = self.conv_1(self._pad(x * x_mask))
        # conv_2(pad(drop(relu(x)) * x_mask)), keeping less for the backward pass when training
        return relu_dropout_conv(x, x_mask, self.conv_2, self._padding(), self.drop)

    def _forward_in_pieces(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        """forward() piece by piece over time: each output frame needs 2 * padding frames of context on
        each side (two convolutions), so pieces read that much more and keep only their own frames."""
        left, right = (2 * p for p in self._padding())
        length = x.size(-1)
        out = x.new_empty(x.size(0), self.conv_2.out_channels, length)
        for a in range(0, length, FFN_CHUNK_FRAMES):
            b = min(a + FFN_CHUNK_FRAMES, length)
            xa, xb = max(a - left, 0), min(b + right, length)
            piece = self._convolutions(x[..., xa:xb], x_mask[..., xa:xb])
            out[..., a:b] = piece[..., a - xa:b - xa] * x_mask[..., a:b]
        return out


class Encoder(nn.Module):
    """Bidirectional post-norm Transformer with relative positions (enc_p.enc_)."""

    def __init__(
        self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
        kernel_size: int = 1, p_dropout: float = 0.0, window_size: int = 4,
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.drop = Dropout(p_dropout)
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(
                MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, window_size=window_size)
            )
            self.norm_layers_1.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout))
            self.norm_layers_2.append(LayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            y = self.drop(attn(x, x, x_mask=x_mask))
            x = norm_1(x + y)
            y = self.drop(ffn(x, x_mask))
            x = norm_2(x + y)
        return x * x_mask


class FFT(nn.Module):
    """Causal feed-forward Transformer (f0 decoder, transformer flow).

    With `gin_channels > 0` (flow use) every layer first mixes in the speaker: `cond_pre` doubles the
    channels, a slice of `cond_layer(g)` is added and a tanh*sigmoid gate halves them again.
    Attention sees only the causal mask (not the padding mask), as in the original.
    """

    def __init__(
        self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int = 1,
        kernel_size: int = 1, p_dropout: float = 0.0, proximal_init: bool = True, gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        if gin_channels > 0:
            self.cond_pre = nn.Conv1d(hidden_channels, 2 * hidden_channels, 1)
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        self.drop = Dropout(p_dropout)
        self.self_attn_layers = nn.ModuleList()
        self.norm_layers_0 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        for _ in range(n_layers):
            self.self_attn_layers.append(
                MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, proximal_init=proximal_init)
            )
            self.norm_layers_0.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(
                FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout, causal=True)
            )
            self.norm_layers_1.append(LayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        if g is not None and self.gin_channels > 0:
            g = self.cond_layer(g)
        else:
            g = None
        x = x * x_mask
        width = 2 * self.hidden_channels
        for i in range(self.n_layers):
            if g is not None:
                x = self.cond_pre(x)
                x = fused_add_tanh_sigmoid_multiply(x, g[:, i * width:(i + 1) * width], self.hidden_channels)
            y = self.drop(self.self_attn_layers[i](x, x, causal=True))
            x = self.norm_layers_0[i](x + y)
            y = self.drop(self.ffn_layers[i](x, x_mask))
            x = self.norm_layers_1[i](x + y)
        return x * x_mask
