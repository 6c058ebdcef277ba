"""Known answers for what each trainer feeds its denoiser and what it trains it towards, computed
here independently of the trainers' code (closed forms from the schedulers' configs):

* SD2 inpainting: the 9 input channels in the pipeline's order [noisy latents, mask, masked-image
  latents], noisy = sqrt(a_t) x0 + sqrt(1 - a_t) eps with a_t the cumulative product of the
  scaled-linear betas, target eps (epsilon) or sqrt(a_t) eps - sqrt(1 - a_t) x0 (v_prediction),
  plain MSE;
* SD3 flow matching: x_t = (1 - s) x0 + s n, target n - x0, weighting 1 / s^-2 / cosmap, the
  timestep the transformer sees = 1000 s.

Then end to end: a real batch of each trainer's dataset through its latents and loss with the
tiny models, against the same computation written out here. A swapped channel order, an x0
target or a reversed flow sign fails these tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.synthetic import write_trainer_set
from mammosynth.training import data as tdata
from mammosynth.training.config import SD35LoraConfig
from mammosynth.training.inpaint import InpaintLatents, diffusion_target, inpaint_model_input, inpainting_loss
from mammosynth.training.sd35_lora import flow_matching_loss, flow_matching_terms, sample_sigmas, scale_latents

B0, B1, T = 0.00085, 0.012, 1000  # the SD2 scaled-linear schedule (tiny model and stabilityai's)


def alphas_cumprod() -> torch.Tensor:
    betas = np.linspace(math.sqrt(B0), math.sqrt(B1), T, dtype=np.float64) ** 2
    return torch.from_numpy(np.cumprod(1.0 - betas))


def ddpm(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=B0,
        beta_end=B1,
        beta_schedule="scaled_linear",
        num_train_timesteps=T,
        prediction_type=prediction_type,
    )


def fixed(shape, seed) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class Spy(torch.nn.Module):
    """A denoiser that records its input and returns a fixed prediction."""

    def __init__(self, prediction: torch.Tensor, sd3: bool = False):
        super().__init__()
        self.prediction, self.sd3, self.calls = prediction, sd3, []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.sd3:
            return (self.prediction,)
        from types import SimpleNamespace

        return SimpleNamespace(sample=self.prediction)


# --- SD2 inpainting ------------------------------------------------------------------------------------


def test_inpaint_channel_order_is_noisy_mask_masked():
    noisy, mask, masked = torch.full((2, 4, 3, 3), 1.0), torch.full((2, 1, 3, 3), 2.0), torch.full((2, 4, 3, 3), 3.0)
    x = inpaint_model_input(noisy, mask, masked)
    assert x.shape == (2, 9, 3, 3)
    assert [float(x[:, c].mean()) for c in range(9)] == [1, 1, 1, 1, 2, 3, 3, 3, 3]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inpaint_noisy_input_target_and_loss(prediction_type):
    x0, eps, masked, pred = (
        fixed((3, 4, 4, 4), 1),
        fixed((3, 4, 4, 4), 2),
        fixed((3, 4, 4, 4), 3),
        fixed((3, 4, 4, 4), 4),
    )
    mask = (fixed((3, 1, 4, 4), 5) > 0).float()
    t = torch.tensor([0, 499, 999])
    a = alphas_cumprod()[t].float().view(-1, 1, 1, 1)
    want_noisy = a.sqrt() * x0 + (1 - a).sqrt() * eps
    want_target = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
    spy = Spy(pred)
    loss = inpainting_loss(spy, ddpm(prediction_type), x0, masked, mask, torch.zeros(1, 5, 8), noise=eps, timesteps=t)
    (sample, timesteps, hidden), _ = spy.calls[0]
    torch.testing.assert_close(sample[:, :4], want_noisy, rtol=1e-5, atol=1e-6)
    assert torch.equal(sample[:, 4:5], mask) and torch.equal(sample[:, 5:], masked)
    assert torch.equal(timesteps, t) and hidden.shape == (3, 5, 8)
    torch.testing.assert_close(loss, ((pred - want_target) ** 2).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(diffusion_target(ddpm(prediction_type), x0, eps, t), want_target, rtol=1e-5, atol=1e-6)


def test_inpaint_loss_end_to_end_on_a_real_batch(tiny_sd2_inpaint, tmp_path):
    """Dataset batch -> VAE latents and latent mask -> noising -> tiny UNet -> MSE, against the
    same steps written out with diffusers' components."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    prepared = write_trainer_set(tmp_path / "prep", n=4)
    ds, meta = tdata.load_prepared(prepared)
    rows = tdata.rows_with_birads(meta, 4)
    data = tdata.InpaintData(ds, rows, tdata.Augment(64), birads=4, seed=0, grid=8)
    batch = tdata.collate([data[(0, i)] for i in range(2)])
    vae = AutoencoderKL.from_pretrained(tiny_sd2_inpaint, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(tiny_sd2_inpaint, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(tiny_sd2_inpaint, subfolder="scheduler")
    hidden = fixed((1, 77, 32), 9)
    t = torch.tensor([100, 800])
    eps = fixed((2, 4, 8, 8), 7)

    g = torch.Generator().manual_seed(3)
    lat, masked, mask = InpaintLatents(vae, "cpu", torch.float32)(batch, g)
    with torch.no_grad():
        got = inpainting_loss(unet, scheduler, lat, masked, mask, hidden, noise=eps, timesteps=t)

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        x0 = vae.encode(batch["pixel_values"]).latent_dist.sample(g) * vae.config.scaling_factor
        m_lat = (
            vae.encode(batch["pixel_values"] * (batch["mask"] < 0.5)).latent_dist.sample(g) * vae.config.scaling_factor
        )
        m = batch["mask"][:, :, ::8, ::8]  # whole 8x8 cells: any pixel of a cell is the cell
        assert torch.equal(F.max_pool2d(batch["mask"], 8), m)
        a = alphas_cumprod()[t].float().view(-1, 1, 1, 1)
        x = torch.zeros(2, 9, 8, 8)
        x[:, 0:4], x[:, 4:5], x[:, 5:9] = a.sqrt() * x0 + (1 - a).sqrt() * eps, m, m_lat
        want = ((unet(x, t, hidden.expand(2, -1, -1)).sample - eps) ** 2).mean()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# --- SD3 flow matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["logit_normal", "sigma_sqrt", "cosmap", "mode", "none"])
def test_flow_matching_noisy_input_target_and_weighting(scheme):
    x0, n = fixed((3, 16, 2, 2), 1), fixed((3, 16, 2, 2), 2)
    s = torch.tensor([0.1, 0.5, 0.9])
    noisy, target, w = flow_matching_terms(x0, n, s, scheme)
    sv = s.view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - sv) * x0 + sv * n)
    torch.testing.assert_close(target, n - x0)
    want_w = {"sigma_sqrt": sv**-2, "cosmap": 2 / (math.pi * (1 - 2 * sv + 2 * sv**2))}.get(scheme, torch.ones_like(sv))
    torch.testing.assert_close(w.float().expand(3, 1, 1, 1), want_w.float())


def _flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def test_flow_matching_sigmas_follow_the_shifted_schedule():
    sched, config = _flow_scheduler(), SD35LoraConfig(prepared="p", output_dir="o")
    timesteps, sigmas = sample_sigmas(sched, 64, config, torch.Generator().manual_seed(0))
    torch.testing.assert_close(timesteps, sigmas * T)
    # sigma = shift u / (1 + (shift - 1) u) with shift 3 and u on the grid 1/T, 2/T, .. 1
    u = sigmas.double() / (3 - 2 * sigmas.double())
    torch.testing.assert_close((u * T).round(), u * T, atol=1e-3, rtol=0)
    assert 0 < sigmas.min() and sigmas.max() <= 1 and len(set(sigmas.tolist())) > 10


def test_flow_matching_loss_feeds_x_t_and_trains_towards_n_minus_x0():
    x0, n, pred = fixed((2, 16, 4, 4), 1), fixed((2, 16, 4, 4), 2), fixed((2, 16, 4, 4), 3)
    config = SD35LoraConfig(prepared="p", output_dir="o", weighting_scheme="cosmap")
    s, t = torch.tensor([0.25, 0.75]), torch.tensor([250.0, 750.0])
    spy = Spy(pred, sd3=True)
    loss = flow_matching_loss(
        spy, _flow_scheduler(), x0, torch.zeros(2, 3, 8), torch.zeros(2, 4), config, noise=n, sigmas_timesteps=(t, s)
    )
    kw = spy.calls[0][1]
    sv = s.view(-1, 1, 1, 1)
    torch.testing.assert_close(kw["hidden_states"], (1 - sv) * x0 + sv * n)
    assert torch.equal(kw["timestep"], t)
    w = 2 / (math.pi * (1 - 2 * sv + 2 * sv**2))
    torch.testing.assert_close(loss, (w * (pred - (n - x0)) ** 2).mean(), rtol=1e-5, atol=1e-6)


def test_flow_matching_loss_end_to_end_on_a_real_batch(tiny_sd3, tmp_path):
    """Dataset batch -> SD3 VAE latents (shift, scale) -> x_t -> tiny transformer -> weighted MSE
    towards n - x0, against the same steps written out here."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    prepared = write_trainer_set(tmp_path / "prep", n=2)
    ds, meta = tdata.load_prepared(prepared)
    batch = tdata.collate(
        [tdata.Text2ImageData(ds, meta, tdata.Augment(64), seed=0, vendor=False)[(0, i)] for i in range(2)]
    )
    vae = AutoencoderKL.from_pretrained(tiny_sd3, subfolder="vae")
    transformer = SD3Transformer2DModel.from_pretrained(tiny_sd3, subfolder="transformer")
    config = SD35LoraConfig(prepared="p", output_dir="o", weighting_scheme="sigma_sqrt")
    embeds, pooled = fixed((2, 10, 32), 4), fixed((2, 32), 5)
    n = fixed((2, 16, 8, 8), 6)
    s, t = torch.tensor([0.3, 0.8]), torch.tensor([300.0, 800.0])
    with torch.no_grad():
        z = vae.encode(batch["pixel_values"]).latent_dist.mode()
        got = flow_matching_loss(
            transformer,
            _flow_scheduler(),
            scale_latents(vae.config, z),
            embeds,
            pooled,
            config,
            noise=n,
            sigmas_timesteps=(t, s),
        )
        x0 = (z - 0.0609) * 1.5305
        sv = s.view(-1, 1, 1, 1)
        out = transformer(
            hidden_states=(1 - sv) * x0 + sv * n,
            timestep=t,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        want = (sv**-2 * (out - (n - x0)) ** 2).mean()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
