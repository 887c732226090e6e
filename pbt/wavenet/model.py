"""WaveNet (van den Oord et al. 2016) in one readable file.

An autoregressive model of raw audio: each 8-bit mu-law sample is predicted from the ones
before it by a stack of causal dilated convolutions with gated tanh·sigmoid units and
residual and skip connections, ending in a 256-way softmax. Optional local conditioning
on a log-mel spectrogram, upsampled to the sample rate, turns it into a vocoder.

Conventions (as in nanoGPT): ``forward(x)`` takes the mu-law classes of samples
``x[0..T-1]`` and returns logits whose position ``t`` predicts sample ``t+1`` from
``x[t-R+1..t]``, where ``R`` is :attr:`WaveNetConfig.receptive_field`. The caller builds
targets by shifting; positions whose target is ``-1`` are left out of the loss, which is
how a trainer scores only predictions whose whole receptive field lies inside a crop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class WaveNetConfig:
    layers_per_stack: int = 10  # dilations 1, 2, 4, ... 2**(layers_per_stack-1) in each stack
    stacks: int = 3
    residual_channels: int = 64
    dilation_channels: int = 64
    skip_channels: int = 128
    quantization: int = 256  # mu-law levels; mu = quantization - 1
    kernel_size: int = 2
    cond_channels: int = 0  # 0: unconditional; e.g. 80 to condition on an 80-bin log-mel (vocoder)

    @property
    def dilations(self) -> list[int]:
        return [2**i for i in range(self.layers_per_stack)] * self.stacks

    @property
    def receptive_field(self) -> int:
        """Input samples one output sees: the current one plus every dilated tap behind it."""
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# ---------------------------------------------------------------------------- mu-law


def mu_law_encode(audio: torch.Tensor, quantization: int = 256) -> torch.Tensor:
    """Float audio in [-1, 1] → integer classes in [0, quantization).

    Companding spends the levels where speech lives (near zero), which is why 8 bits are
    enough for a softmax over sample values.
    """
    mu = quantization - 1
    x = audio.float().clamp(-1.0, 1.0)
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((companded + 1) / 2 * mu + 0.5).long().clamp(0, mu)


def mu_law_decode(classes: torch.Tensor, quantization: int = 256) -> torch.Tensor:
    """Integer classes → float audio in [-1, 1] (the centre of each companded bin)."""
    mu = quantization - 1
    companded = 2 * classes.float() / mu - 1
    return torch.sign(companded) * torch.expm1(companded.abs() * math.log1p(mu)) / mu


# ---------------------------------------------------------------------------- layers


class CausalConv1d(nn.Conv1d):
    """A dilated convolution padded on the left only, so output t never sees input t+1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))

    def step(self, history: torch.Tensor) -> torch.Tensor:
        """One output from the last ``left_pad + 1`` inputs (generation without recomputation)."""
        taps = history[:, :, :: self.dilation[0]]
        return F.conv1d(taps, self.weight, self.bias)


class ResidualBlock(nn.Module):
    def __init__(self, cfg: WaveNetConfig, dilation: int) -> None:
        super().__init__()
        self.conv = CausalConv1d(cfg.residual_channels, 2 * cfg.dilation_channels, cfg.kernel_size, dilation)
        self.cond = nn.Conv1d(cfg.cond_channels, 2 * cfg.dilation_channels, 1) if cfg.cond_channels else None
        self.skip = nn.Conv1d(cfg.dilation_channels, cfg.skip_channels, 1)
        self.residual = nn.Conv1d(cfg.dilation_channels, cfg.residual_channels, 1)

    def gate(self, h: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cond is not None:
            if cond is None:
                raise ValueError("this WaveNet is conditioned (cond_channels > 0): pass cond")
            h = h + self.cond(cond)
        filt, gate = h.chunk(2, dim=1)
        z = torch.tanh(filt) * torch.sigmoid(gate)
        return self.residual(z), self.skip(z)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        res, skip = self.gate(self.conv(x), cond)
        return x + res, skip


# ---------------------------------------------------------------------------- model


class WaveNet(nn.Module):
    def __init__(self, config: WaveNetConfig) -> None:
        super().__init__()
        if config.kernel_size < 2:
            raise ValueError("kernel_size must be at least 2 for the dilations to grow the receptive field")
        self.config = config
        # An embedding is a one-hot input followed by a 1x1 convolution, without the one-hot.
        self.embed = nn.Embedding(config.quantization, config.residual_channels)
        self.blocks = nn.ModuleList(ResidualBlock(config, d) for d in config.dilations)
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(config.skip_channels, config.skip_channels, 1),
            nn.ReLU(),
            nn.Conv1d(config.skip_channels, config.quantization, 1),
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def upsample_cond(self, cond: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """Stretch conditioning frames (B, C, frames) to one vector per sample (B, C, length).

        Linear interpolation keeps frames aligned with their samples for any hop size; a
        learned upsampler would add parameters without changing what the model can see.
        """
        if cond is None or self.config.cond_channels == 0:
            return None
        if cond.shape[-1] == length:
            return cond
        return F.interpolate(cond, size=length, mode="linear", align_corners=False)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x``: (B, T) classes; ``cond``: (B, cond_channels, frames); ``targets``: (B, T), -1 = skip.

        Returns logits (B, T, quantization) and, with targets, the mean cross entropy in nats.
        """
        cond = self.upsample_cond(cond, x.shape[1])
        h = self.embed(x).transpose(1, 2)  # (B, C, T)
        skips: torch.Tensor | None = None
        for block in self.blocks:
            h, skip = block(h, cond)
            skips = skip if skips is None else skips + skip
        logits = self.head(skips)  # (B, Q, T): cross_entropy wants classes on dim 1
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets, ignore_index=-1)
        return logits.transpose(1, 2), loss

    @torch.no_grad()
    def generate(
        self,
        n_samples: int,
        *,
        cond: torch.Tensor | None = None,
        batch_size: int = 1,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``n_samples`` mu-law classes (B, n_samples), starting from silence.

        Each layer keeps a queue of its last ``(kernel_size-1)*dilation + 1`` inputs (Paine et
        al., "Fast WaveNet"), so a sample costs one pass through the layers instead of a
        forward over the whole receptive field. ``temperature=0`` is greedy decoding.
        On CPU the loop runs single-threaded: its tensors are tiny, and waking a thread pool
        for every one of its many small ops made it a hundred times slower on a busy machine.
        """
        threads = torch.get_num_threads()
        if self.embed.weight.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            return self._generate(n_samples, cond, batch_size, temperature, generator)
        finally:
            torch.set_num_threads(threads)

    def _generate(
        self,
        n_samples: int,
        cond: torch.Tensor | None,
        batch_size: int,
        temperature: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        was_training = self.training
        self.eval()
        device = self.embed.weight.device
        cfg = self.config
        cond_up = self.upsample_cond(cond, n_samples)
        queues = [
            torch.zeros(batch_size, cfg.residual_channels, b.conv.left_pad + 1, device=device) for b in self.blocks
        ]
        current = torch.full((batch_size,), cfg.quantization // 2, dtype=torch.long, device=device)
        out = torch.empty(batch_size, n_samples, dtype=torch.long, device=device)
        for t in range(n_samples):
            h = self.embed(current).unsqueeze(-1)  # (B, C, 1)
            c_t = cond_up[:, :, t : t + 1] if cond_up is not None else None
            skips = None
            for i, block in enumerate(self.blocks):
                queues[i] = torch.cat([queues[i][:, :, 1:], h], dim=2)
                res, skip = block.gate(block.conv.step(queues[i]), c_t)
                h = h + res
                skips = skip if skips is None else skips + skip
            logits = self.head(skips)[:, :, 0].float()
            if temperature <= 0:
                current = logits.argmax(dim=-1)
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                current = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            out[:, t] = current
        self.train(was_training)
        return out


# ---------------------------------------------------------------------------- conditioning


def log_mel_spectrogram(
    audio: torch.Tensor, sample_rate: int, n_mels: int = 80, hop: int = 256, n_fft: int = 1024
) -> torch.Tensor:
    """(B, T) float audio → (B, n_mels, T // hop + 1) log-mel frames, the vocoder's input."""
    window = torch.hann_window(n_fft, device=audio.device)
    # Zero (not reflect) padding: a crop may be shorter than the window.
    spec = torch.stft(
        audio.float(), n_fft, hop_length=hop, window=window, center=True, pad_mode="constant", return_complex=True
    )
    power = spec.abs().pow(2)  # (B, n_fft // 2 + 1, frames)
    mel = mel_filterbank(sample_rate, n_fft, n_mels, device=audio.device) @ power
    return torch.log(mel.clamp_min(1e-5))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, device: torch.device | None = None) -> torch.Tensor:
    """Triangular filters evenly spaced on the HTK mel scale, (n_mels, n_fft // 2 + 1)."""

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, device=device)
    edges = mel_to_hz(torch.linspace(0.0, float(hz_to_mel(torch.tensor(sample_rate / 2))), n_mels + 2, device=device))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs - lower) / (centre - lower)
    falling = (upper - fft_freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)
