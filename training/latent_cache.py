"""VAE latents of fixed training images, encoded once and shared by every rank of a node.

Rank p encodes keys p, p + N, p + 2N, ... (N processes) and writes them to its own part file;
after a barrier every rank memory-maps all parts read-only. So each image is encoded once in
the whole run, and the latents live once per node in the page cache instead of once per rank in
host memory. What is cached is the latent distribution (mean, std); each use samples from it,
like ``latent_dist.sample()`` on the fly.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mammosynth.builders.core.atomic import atomic_file
from mammosynth.builders.core.progress import Rank
from mammosynth.builders.core.progress import bar as progress_bar


def encode_distribution(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels -> (B, 2, C, h, w) latent mean and std, float32 on the CPU."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return torch.stack([dist.mean, dist.std], dim=1).float().cpu()


class LatentCache:
    """``count`` latent distributions, addressed by key 0..count-1."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def distribution(self, keys: Sequence[int]) -> torch.Tensor:
        n = len(self.parts)
        return torch.from_numpy(np.stack([self.parts[k % n][k // n] for k in keys]).astype(np.float32))

    def sample(self, keys: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, h, w) latents drawn from the cached distributions (unscaled, like ``sample()``)."""
        dist = self.distribution(keys)
        mean, std = dist[:, 0], dist[:, 1]
        return mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)

    @classmethod
    def build(
        cls,
        folder: Path,
        count: int,
        encode: Callable[[list[int]], torch.Tensor],
        accelerator,
        *,
        batch_size: int = 8,
        store_dtype=np.float32,
        desc: str = "caching latents",
    ) -> LatentCache:
        """Encode keys 0..count-1 with ``encode(keys) -> (B, 2, C, h, w)``, sharded by rank, into
        ``folder`` (replaced), and map every part."""
        n, p = accelerator.num_processes, accelerator.process_index
        if accelerator.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        accelerator.wait_for_everyone()
        encode_shard(
            folder,
            count,
            encode,
            p,
            n,
            batch_size=batch_size,
            store_dtype=store_dtype,
            desc=desc,
        )
        accelerator.wait_for_everyone()
        return cls.open(folder, n)

    @classmethod
    def open(cls, folder: Path, num_processes: int) -> LatentCache:
        return cls([np.load(part_path(folder, q, num_processes), mmap_mode="r") for q in range(num_processes)])


def part_path(folder: Path, rank: int, num_processes: int) -> Path:
    return folder / f"part-{rank}-of-{num_processes}.npy"


def encode_shard(
    folder: Path,
    count: int,
    encode: Callable[[list[int]], torch.Tensor],
    rank: int,
    num_processes: int,
    *,
    batch_size: int = 8,
    store_dtype=np.float32,
    progress: bool = True,
    desc: str = "encode latents",
) -> Path:
    """This rank's part: keys rank, rank + N, ... encoded in batches, written atomically."""
    mine = list(range(rank, count, num_processes))
    chunks = []
    with torch.no_grad():
        batches = range(0, len(mine), batch_size)
        for s in progress_bar(batches, desc=desc, unit="batch", enabled=progress, rank=Rank(rank, num_processes)):
            chunks.append(encode(mine[s : s + batch_size]).numpy().astype(store_dtype))
    path = part_path(folder, rank, num_processes)
    with atomic_file(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, np.concatenate(chunks) if chunks else np.zeros((0, 2), store_dtype))
    return path
