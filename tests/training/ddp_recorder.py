"""Entry for the 2-process test (``accelerate launch ... ddp_recorder.py RECORD -- ARGS``): runs
``mammosynth train ARGS`` twice in each rank — with ``--stop-after 3``, then ``--resume latest`` —
recording per rank, in RECORD-<rank>.jsonl, the noise and timesteps of every inpainting loss, each
image the latent cache encodes and each save of the trained UNet. Not collected by pytest."""

from __future__ import annotations

import json
import sys

import torch

from mammosynth.builders.core.errors import exit_code
from mammosynth.training import inpaint


def main() -> None:
    record, args = sys.argv[1], sys.argv[3:]
    from accelerate import PartialState

    rank = PartialState(cpu=True).process_index
    log = open(f"{record}-{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(**entry) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()

    target, encode = inpaint.diffusion_target, inpaint.encode_distribution

    def recording_target(scheduler, latents, noise, timesteps):
        if torch.is_grad_enabled():  # training micro-steps, not the probe
            write(kind="noise", noise=float(noise.double().sum()), timesteps=timesteps.tolist())
        return target(scheduler, latents, noise, timesteps)

    def recording_encode(vae, pixels):
        write(kind="encode", n=int(pixels.shape[0]))
        return encode(vae, pixels)

    from diffusers import UNet2DConditionModel

    save = UNet2DConditionModel.save_pretrained

    def recording_save(self, folder, *a, **k):
        write(kind="save", folder=str(folder))
        return save(self, folder, *a, **k)

    inpaint.diffusion_target, inpaint.encode_distribution = recording_target, recording_encode
    UNet2DConditionModel.save_pretrained = recording_save
    from mammosynth.training.commands import train

    for extra in (["--stop-after", "3"], ["--resume", "latest"]):
        write(kind="run", args=extra)
        try:
            train.main(args + extra, prog_name="train", standalone_mode=False)
        except BaseException as exc:  # noqa: BLE001 - the exit code is the CLI's
            sys.exit(exit_code(exc))


if __name__ == "__main__":
    main()
