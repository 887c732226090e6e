"""The WaveNet model: causality, receptive field, mu-law, shapes, loss, generation."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from pbt.wavenet.model import (  # noqa: E402
    WaveNet,
    WaveNetConfig,
    log_mel_spectrogram,
    mu_law_decode,
    mu_law_encode,
)

SMALL = WaveNetConfig(layers_per_stack=3, stacks=2, residual_channels=8, dilation_channels=8, skip_channels=16)


def _model(cfg: WaveNetConfig = SMALL, seed: int = 0) -> WaveNet:
    torch.manual_seed(seed)
    model = WaveNet(cfg)
    # Default init leaves some outputs nearly flat; larger weights make any dependence visible.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (WaveNetConfig(layers_per_stack=10, stacks=3), 3 * 1023 + 1),  # the paper's usual size
        (WaveNetConfig(layers_per_stack=5, stacks=2), 2 * 31 + 1),
        (WaveNetConfig(layers_per_stack=3, stacks=2, kernel_size=3), 2 * 2 * 7 + 1),
    ],
)
def test_receptive_field_formula(cfg: WaveNetConfig, expected: int) -> None:
    assert cfg.receptive_field == expected


@pytest.mark.parametrize(
    "cfg",
    [
        SMALL,
        WaveNetConfig(
            layers_per_stack=2, stacks=2, kernel_size=3, residual_channels=8, dilation_channels=8, skip_channels=8
        ),
    ],
)
def test_output_depends_exactly_on_its_receptive_field(cfg: WaveNetConfig) -> None:
    """Perturbing input t changes outputs t .. t+R-1 and nothing else: causal, and R is exact."""
    model, rf, length = _model(cfg), cfg.receptive_field, 3 * cfg.receptive_field
    x = torch.randint(0, 256, (1, length))
    with torch.no_grad():
        base, _ = model(x)
        for t in (0, 5, rf, length - 1):
            y = x.clone()
            y[0, t] = (y[0, t] + 128) % 256
            out, _ = model(y)
            changed = (out - base).abs().amax(dim=-1)[0]
            assert changed[:t].max() == 0 if t else True, f"output before {t} saw input {t}"
            assert (changed[t : min(t + rf, length)] > 0).all(), "an output inside the receptive field ignored it"
            assert (changed[t + rf :] == 0).all(), "an output beyond the receptive field saw the input"


def test_gradients_never_flow_from_the_future() -> None:
    model = _model()
    emb = model.embed(torch.randint(0, 256, (1, 64))).detach().requires_grad_(True)
    h, skips = emb.transpose(1, 2), None
    for block in model.blocks:
        h, skip = block(h, None)
        skips = skip if skips is None else skips + skip
    logits = model.head(skips)
    logits[0, :, 20].sum().backward()
    grad = emb.grad[0].abs().sum(dim=-1)
    assert (grad[21:] == 0).all()
    assert grad[20] > 0


def test_mu_law_round_trip() -> None:
    q = torch.arange(256)
    assert torch.equal(mu_law_encode(mu_law_decode(q)), q)  # every class decodes to its own bin
    x = torch.linspace(-1, 1, 20001)
    code = mu_law_encode(x)
    assert code.min() == 0 and code.max() == 255 and (code.diff() >= 0).all()
    # Round trip error is within half a bin, measured in the companded domain.
    comp = lambda v: torch.sign(v) * torch.log1p(255 * v.abs()) / math.log1p(255)  # noqa: E731
    assert (comp(mu_law_decode(code)) - comp(x)).abs().max() <= 1 / 255 + 1e-6
    assert mu_law_decode(mu_law_encode(torch.tensor([0.0]))).abs().item() < 1e-3  # silence stays silent


def test_shapes_and_loss() -> None:
    model = _model()
    x = torch.randint(0, 256, (3, 100))
    targets = torch.randint(0, 256, (3, 100))
    logits, loss = model(x, targets=targets)
    assert logits.shape == (3, 100, 256)
    assert loss is not None and torch.isfinite(loss)
    assert model(x)[1] is None
    # Targets of -1 are left out: the loss is the mean over the remaining positions.
    masked = targets.clone()
    masked[:, :40] = -1
    _, part = model(x, targets=masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 40:].reshape(-1, 256), targets[:, 40:].reshape(-1))
    torch.testing.assert_close(part, expected)
    # An untrained model is close to uniform: about 8 bits per sample.
    _, fresh = WaveNet(SMALL)(x, targets=targets)
    assert abs(fresh.item() / math.log(2) - 8) < 0.5


def test_generate_count_range_and_cache_matches_forward() -> None:
    model = _model()
    g = torch.Generator().manual_seed(0)
    samples = model.generate(300, batch_size=2, generator=g)
    assert samples.shape == (2, 300) and samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < 256
    # Greedy generation through the per-layer queues must agree with a full forward pass.
    greedy = model.generate(120, temperature=0)
    inputs = torch.cat([torch.full((1, 1), 128), greedy[:, :-1]], dim=1)
    logits, _ = model(inputs)
    assert torch.equal(logits.argmax(dim=-1), greedy)


def test_local_conditioning_on_log_mel() -> None:
    cfg = WaveNetConfig(
        layers_per_stack=3, stacks=1, residual_channels=8, dilation_channels=8, skip_channels=8, cond_channels=20
    )
    model = _model(cfg)
    audio = torch.sin(torch.linspace(0, 400, 2000))[None] * 0.5
    mel = log_mel_spectrogram(audio, 16000, n_mels=20, hop=100, n_fft=256)
    assert mel.shape == (1, 20, 2000 // 100 + 1) and torch.isfinite(mel).all()
    x = mu_law_encode(audio)
    logits, loss = model(x, cond=mel, targets=x)
    assert logits.shape == (1, 2000, 256) and torch.isfinite(loss)
    other, _ = model(x, cond=mel + 1.0)
    assert not torch.equal(logits, other), "conditioning must reach the output"
    with pytest.raises(ValueError, match="cond"):
        model(x)
    assert model.generate(50, cond=mel).shape == (1, 50)
