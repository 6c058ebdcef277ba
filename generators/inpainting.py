"""BI-RADS-specific lesion inpainting on real BI-RADS 1 backgrounds (source paper §3.3).

For a task (class b, view, laterality, index i) the background is the i-th BI-RADS 1 image of that
view and laterality in the prepared set (sorted by image_id, wrapping), resized to the output
size. The allowed region comes from ``breast_mask.allowed_region``; a box of the class's real size
range is placed there by rejection sampling with the image's mask seed; class b's own checkpoint
inpaints the box (DPM-Solver++ multistep); the original pixels are pasted back outside the box, so
only the lesion region differs from the background.

The mask the model fills is the box grown to whole latent cells (``box_mask(..., grid=8)``): the
pipeline downsamples the mask to the latent grid, and a cell only partly inside the box would be
kept as "known" while its box pixels are blanked in the masked image, which the model then
reproduces as grey strips up to 7 px wide along the box edges.

Two modes (``InpaintingParams.mode``): ``full_frame`` (the paper) denoises the whole background at
the output resolution; ``window`` denoises only a ``window``-pixel square around the box, cut from
the background at output resolution and placed on the latent grid. Every window has the same shape,
so they batch and compile like full frames, at a fraction of the pixels.

Everything that can be wrong with the spec is checked in the constructor, from JSON configs and
the prepared set's labels, before a single weight is loaded.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from mammosynth.builders.core import schema
from mammosynth.builders.core.box_mask import box_mask
from mammosynth.builders.core.breast_mask import allowed_region
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.imageio import as_bit_depth, rgb_to_grey
from mammosynth.builders.core.progress import no_loading_bars
from mammosynth.builders.core.provenance import checkpoint_identity
from mammosynth.builders.core.spec import InpaintingParams, ReleaseSpec
from mammosynth.generators.backgrounds import (
    Background,
    backgrounds_by_view,
    class_size_ranges,
    decode_row,
    load_prepared,
)
from mammosynth.generators.box_sampling import Box, sample_box
from mammosynth.generators.engine import SampleTask, Skip
from mammosynth.generators.pipelines import (
    Runtime,
    check_resolution,
    component_config,
    decode,
    generators_for,
    pipeline_folder,
    prepare_pipeline,
    vae_factor,
)

FIELD = "methods.inpainting.inpainting"


@dataclass
class Placement:
    """A task made ready for the GPU: resized background, box, and the pipeline inputs."""

    task: SampleTask
    background: Background
    image: np.ndarray  # output-size grey, spec bit depth
    box: Box
    frame: tuple[int, int, int]  # x, y and side of the square the model denoises (the whole image, or the window)


def aligned_box(shape: tuple[int, int], box: Box, grid: int) -> Box:
    """``box`` grown to whole ``grid`` cells, as ``box_mask`` draws it."""
    ys, xs = np.nonzero(box_mask(shape, [box], grid=grid))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def window_origin(box: Box, aligned: Box, side: int, image_side: int, grid: int) -> tuple[int, int]:
    """Top-left corner of the ``side``-pixel window: centred on ``box``, on the ``grid``, inside the
    image, and holding the whole ``aligned`` box (needs ``aligned`` no larger than ``side``)."""

    def axis(b0: int, b1: int, a0: int, a1: int) -> int:
        start = int(round((b0 + b1 - side) / 2)) // grid * grid
        return min(max(start, max(0, a1 - side)), min(a0, image_side - side))

    return axis(box[0], box[2], aligned[0], aligned[2]), axis(box[1], box[3], aligned[1], aligned[3])


class InpaintingSampler:
    """Sampler (engine protocol) for ``method="inpainting"``."""

    method = "inpainting"

    def __init__(
        self, spec: ReleaseSpec, runtime: Runtime | None = None, *, spec_file: str | Path | None = None
    ) -> None:
        self.spec = spec
        self.spec_file = spec_file
        self.params: InpaintingParams = spec.methods["inpainting"].inpainting  # type: ignore[assignment]
        self.runtime = runtime or Runtime()
        self.bit_depth = spec.output.bit_depth
        p = self.params
        cells = {c: n for c, n in spec.cell_counts("inpainting").items() if n > 0}
        self.classes = sorted({b for b, _, _ in cells})

        # checkpoints: one per requested class, each an SD inpainting pipeline
        self.folders: dict[int, Path] = {}
        self.factors: dict[int, int] = {}  # VAE downsampling of each class's pipeline
        for b in self.classes:
            if b not in p.checkpoints:
                raise InputError(
                    f"BI-RADS {b} is requested in counts but has no checkpoint (have {sorted(p.checkpoints)})",
                    file=spec_file,
                    field=f"{FIELD}.checkpoints",
                )
            field = f"{FIELD}.checkpoints.{b}"
            folder = pipeline_folder(
                p.checkpoints[b], field=field, needs="unet", kind="an inpainting pipeline", spec_file=spec_file
            )
            unet = component_config(folder, "unet", field=field, spec_file=spec_file)
            if unet.get("in_channels") != 9:
                raise InputError(
                    f"{folder} is not an inpainting pipeline (UNet in_channels {unet.get('in_channels')}, expected 9)",
                    file=spec_file,
                    field=field,
                )
            self.factors[b] = vae_factor(folder, field=field)
            check_resolution(p.resolution, self.factors[b], field=f"{FIELD}.resolution", spec_file=spec_file)
            if p.mode == "window":
                check_resolution(p.window, self.factors[b], field=f"{FIELD}.window", spec_file=spec_file, what="window")
            self.folders[b] = folder
        if p.mode == "window" and p.window > p.resolution:
            raise InputError(
                f"window {p.window} is larger than the output resolution {p.resolution}; use mode full_frame",
                file=spec_file,
                field=f"{FIELD}.window",
            )

        # backgrounds and reference box sizes from the prepared set
        self.dataset = load_prepared(spec.source.prepared)
        self.backgrounds = backgrounds_by_view(self.dataset, list(p.background_birads))
        for (b, view, lat), n in sorted(cells.items()):
            if not self.backgrounds.get((view, lat)):
                raise InputError(
                    f"no BI-RADS {p.background_birads} backgrounds with view {view}, laterality {lat} in the prepared set "
                    f"{spec.source.prepared} (asked for {n} BI-RADS {b} images)",
                    file=spec_file,
                    field="methods.inpainting.counts",
                )
        self.size_ranges = class_size_ranges(self.dataset, self.classes, p.resolution)
        for b, r in self.size_ranges.items():
            if r is None:
                raise InputError(
                    f"the prepared set has no BI-RADS {b} finding boxes to take lesion sizes from",
                    file=spec.source.prepared,
                    field="findings",
                )
            # the window must hold the largest box once grown to whole latent cells
            largest = max(r.w_max, r.h_max)
            need = largest + 2 * self.factors[b]
            if p.mode == "window" and need > p.window:
                raise InputError(
                    f"window {p.window} cannot hold BI-RADS {b}'s largest boxes ({largest:.0f} px at resolution "
                    f"{p.resolution}, plus the latent-cell margin): use window >= {-(-int(np.ceil(need)) // self.factors[b]) * self.factors[b]}",
                    file=spec_file,
                    field=f"{FIELD}.window",
                )
        self.generator_names = {b: checkpoint_identity(f) for b, f in self.folders.items()}
        self._pipes: dict[int, Any] = {}

    # -- identity of a run (resume safety) --------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return json.dumps(
            {
                "params": self.params.model_dump(mode="json", exclude={"batch_size"}),
                "generators": {str(b): g for b, g in self.generator_names.items()},
                "prepared": str(self.spec.source.prepared),
                "bit_depth": self.bit_depth,
            },
            sort_keys=True,
        )

    # -- CPU side: background, allowed region, box ------------------------------------------------

    def background_for(self, task: SampleTask) -> Background:
        group = self.backgrounds[(task.view, task.laterality)]
        return group[task.index % len(group)]

    def background_image(self, bg: Background) -> np.ndarray:
        """Background at output size and bit depth, in its true orientation (un-mirrored)."""
        image = decode_row(self.dataset, bg.row)
        if bg.flipped:
            image = np.ascontiguousarray(image[:, ::-1])
        res = self.params.resolution
        interp = cv2.INTER_AREA if max(image.shape) > res else cv2.INTER_LINEAR
        image = cv2.resize(image, (res, res), interpolation=interp)
        return as_bit_depth(image, self.bit_depth)

    def allowed(self, image: np.ndarray) -> np.ndarray:
        return allowed_region(image, erosion_px=self.params.erosion_px, margin_px=self.params.margin_px)

    def place(self, task: SampleTask) -> Placement | Skip:
        bg = self.background_for(task)
        image = self.background_image(bg)
        region = self.allowed(image)
        sizes = self.size_ranges[task.birads]
        box = sample_box(region, sizes, task.mask_seed, self.params.max_tries)  # type: ignore[arg-type]
        if box is None:
            reason = (
                f"no {sizes.w_min:.0f}-{sizes.w_max:.0f} x {sizes.h_min:.0f}-{sizes.h_max:.0f} px box fits the allowed "
                f"region of background {bg.image_id} after {self.params.max_tries} tries"
                if region.any()
                else f"background {bg.image_id} has an empty allowed region"
            )
            return Skip(task.image_id, reason)
        return Placement(task, bg, image, box, self.frame(task.birads, box))

    def frame(self, birads: int, box: Box) -> tuple[int, int, int]:
        """(x, y, side) of what the model denoises for ``box``: the whole image, or its window."""
        p = self.params
        if p.mode == "full_frame":
            return 0, 0, p.resolution
        grid = self.factors[birads]
        aligned = aligned_box((p.resolution, p.resolution), box, grid)
        x, y = window_origin(box, aligned, p.window, p.resolution, grid)
        return x, y, p.window

    # -- GPU side --------------------------------------------------------------------------------

    def pipeline(self, birads: int):
        if birads not in self._pipes:
            from diffusers import DPMSolverMultistepScheduler, StableDiffusionInpaintPipeline

            rt = self.runtime.resolved()
            with no_loading_bars():
                pipe = StableDiffusionInpaintPipeline.from_pretrained(
                    str(self.folders[birads]), dtype=rt.torch_dtype, safety_checker=None, requires_safety_checker=False
                )
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(
                pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
            )
            self._pipes[birads] = prepare_pipeline(pipe, rt, "unet", fp32_decode=self.bit_depth == 16)
        return self._pipes[birads]

    def inputs(self, pl: Placement) -> tuple[Image.Image, Image.Image]:
        """The pipeline's image and mask for ``pl``, cut to its frame. The mask ("inpaint here":
        255) covers the box grown to whole latent cells; the frame's corner lies on the same grid."""
        x, y, side = pl.frame
        crop = as_bit_depth(pl.image, 8)[y : y + side, x : x + side]
        x0, y0, x1, y1 = pl.box
        mask = box_mask((side, side), [(x0 - x, y0 - y, x1 - x, y1 - y)], grid=self.factors[pl.task.birads])
        return Image.fromarray(crop).convert("RGB"), Image.fromarray(mask.astype(np.uint8) * np.uint8(255))

    def inpaint(self, birads: int, batch: list[Placement]) -> list[np.ndarray]:
        """Run class ``birads``'s pipeline on a batch (frames of one side); returns each frame's
        generated grey pixels."""
        import torch

        p = self.params
        images, masks = zip(*(self.inputs(pl) for pl in batch))
        side = batch[0].frame[2]
        pipe = self.pipeline(birads)
        with torch.inference_mode():
            latents = pipe(
                prompt=[schema.inpainting_prompt(birads)] * len(batch),
                image=list(images),
                mask_image=list(masks),
                height=side,
                width=side,
                num_inference_steps=p.steps,
                guidance_scale=p.guidance,
                generator=generators_for([pl.task.seed for pl in batch]),
                output_type="latent",  # decoded below, in float32 for 16-bit output
            ).images
        return [rgb_to_grey(o, self.bit_depth) for o in decode(pipe, latents)]

    def generate(self, tasks: list[SampleTask]) -> list[dict[str, Any] | Skip]:
        placed = [self.place(t) for t in tasks]
        results: list[dict[str, Any] | Skip] = list(placed)  # Skips stay; placements become rows
        by_class: dict[int, list[int]] = defaultdict(list)
        for i, pl in enumerate(placed):
            if isinstance(pl, Placement):
                by_class[pl.task.birads].append(i)
        for b, idx in sorted(by_class.items()):
            for s in range(0, len(idx), self.params.batch_size):
                chunk = idx[s : s + self.params.batch_size]
                batch = [placed[i] for i in chunk]  # type: ignore[misc]
                for i, pl, generated in zip(chunk, batch, self.inpaint(b, batch)):
                    results[i] = self.row(pl, generated)  # type: ignore[arg-type]
        return results

    def row(self, pl: Placement, generated: np.ndarray) -> dict[str, Any]:
        """The row of ``pl``, ``generated`` being its frame's pixels. Only the lesion box takes
        generated pixels, and ``bbox`` records that box, not the latent-cell-aligned mask around it:
        the box is the lesion, drawn from the real annotations' size range (which validation
        compares against); the margin up to the next latent cell is the model's working room and
        keeps the background's own pixels."""
        x0, y0, x1, y1 = pl.box
        fx, fy, _ = pl.frame
        image = pl.image.copy()
        image[y0:y1, x0:x1] = generated[y0 - fy : y1 - fy, x0 - fx : x1 - fx]  # only the lesion region changes
        t = pl.task
        return {
            "image": image,
            "image_id": t.image_id,
            "method": self.method,
            "birads": schema.birads_label(t.birads),
            "view": t.view,
            "laterality": t.laterality,
            "density": schema.parse_density(pl.background.density),
            "bbox": [[float(x0), float(y0), float(x1), float(y1)]],
            "seed": t.seed,
            "mask_seed": t.mask_seed,
            "prompt": schema.inpainting_prompt(t.birads),
            "source_image": pl.background.image_id,
            "lesion_source": None,
            "manufacturer": pl.background.manufacturer or None,
            "generator": self.generator_names[t.birads],
        }
