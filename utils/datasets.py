"""The training/validation loader: YoloDataset, its seeded samplers and create_dataloader.

Dataset descriptions and image lists live in :mod:`utils.dataconfig`, label parsing, verification and the
label cache in :mod:`utils.labels`, hyperparameters in :mod:`utils.hyp`, the image transforms in
:mod:`utils.augment`.

Augmentation randomness comes from a generator seeded with (seed, epoch, index): the sampler hands the epoch
to the dataset with each index, so results do not depend on the number of workers or on which worker loads
an image.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from utils.augment import (augment_hsv, letterbox, mixup, mosaic4, random_perspective, xywhn_to_xyxy,
                           xyxy_to_xywhn)
from utils.dataconfig import DatasetError, list_image_files
from utils.fileio import atomic_write
from utils.hyp import load_hyp
from utils.labels import cache_path_for, check_class_ids, img2label_paths, scan_dataset, unlabelled_reason


__all__ = ["YoloDataset", "create_dataloader", "EpochSampler", "SeededDistributedSampler"]


def _say(msg: str, verbose: bool = True) -> None:
    if verbose:
        print(msg, flush=True)


def _npy_writer(arr: np.ndarray) -> Callable[[Path], None]:
    """A write function for atomic_write that saves ``arr`` as .npy (np.save would rename a bare path)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    return write


def _sources_text(sources) -> str:
    """The image sources of a split as one short string for messages."""
    srcs = [sources] if isinstance(sources, (str, Path)) else list(sources)
    text = ", ".join(str(s) for s in srcs[:3])
    return text + (f" and {len(srcs) - 3} more" if len(srcs) > 3 else "")


class YoloDataset(Dataset):
    """Images + YOLO labels, letterboxed (validation) or augmented with mosaic/affine/HSV/flips (training).

    ``dataset[i]`` or ``dataset[(i, epoch)]`` -> (img uint8 (3, H, W) RGB, targets (n, 6) float
    [0, cls, x, y, w, h] normalised to the returned image, path, shapes). shapes is
    ((h0, w0), ((h / h0, w / w0), (padw, padh))): original size, total scale and left/top padding, what is
    needed to map predictions back onto the original image. A mosaic has no single original image; its
    shapes describe the mosaic itself.
    """

    def __init__(self, img_files, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, stride: int = 32, pad: float = 0.0,
                 cache: str | None = None, nc: int | None = None, prefix: str = "", seed: int = 0,
                 verbose: bool = True, allow_unlabelled: bool = False):
        self.img_size, self.augment, self.rect, self.stride, self.pad = int(img_size), augment, rect, stride, pad
        self.hyp = load_hyp(hyp) if augment else (dict(hyp) if hyp else {})
        self.mosaic = augment and not rect  # rectangular batches keep whole images
        self.mosaic_border = (-self.img_size // 2, -self.img_size // 2)
        self.seed, self.prefix, self.epoch = int(seed), prefix, 0
        self.sources = img_files
        self._load_labels(img_files, nc, allow_unlabelled, verbose)
        self.n = len(self.img_files)
        self.batch = np.arange(self.n) // max(int(batch_size), 1)
        self.batch_shapes = None
        if rect:
            self._rect_batches(max(int(batch_size), 1))
        self.imgs: list[np.ndarray | None] = [None] * self.n
        self.cache_mode = cache or None
        if self.cache_mode:
            self._cache_images(self.cache_mode, verbose)

    def _load_labels(self, img_files, nc: int | None, allow_unlabelled: bool, verbose: bool) -> None:
        """List the images, verify them with their labels (see utils.labels) and keep the usable ones."""
        prefix = self.prefix
        files = list_image_files(img_files)
        if not files:
            raise DatasetError(f"{prefix}no images found in {_sources_text(img_files)}; check that split's path "
                               f"in the dataset description (image files end in .jpg, .png, ...)")
        label_files = img2label_paths(files)
        records = scan_dataset(files, label_files, cache_path_for(img_files, label_files), prefix, verbose)
        keep = [k for k, r in enumerate(records) if r.ok]
        if not keep:
            raise DatasetError(f"{prefix}none of the {len(files)} images in {_sources_text(img_files)} is usable "
                               f"(see the warnings above); replace or remove the broken files")
        self.img_files = [files[k] for k in keep]
        self.label_files = [label_files[k] for k in keep]
        self.labels = [records[k].labels.copy() for k in keep]
        self.shapes = np.array([records[k].shape for k in keep], dtype=np.int64).reshape(-1, 2)
        if nc is not None:
            check_class_ids(self.labels, self.label_files, int(nc), prefix)
        why = unlabelled_reason(records, label_files)
        if why is not None:
            self._refuse_unlabelled(img_files, why, allow_unlabelled, verbose)

    def _refuse_unlabelled(self, img_files, why: str, allow_unlabelled: bool, verbose: bool) -> None:
        """A split without a single box trains nothing (and scores nothing): refuse unless allowed."""
        split = self.prefix.strip().rstrip(":").strip() or "dataset"
        where = f"the {split} split ({_sources_text(img_files)})"
        if allow_unlabelled:
            _say(f"{self.prefix}WARNING {where} has no labels: {why}; its {len(self.img_files)} images are "
                 f"used as background only (--allow-unlabelled)", verbose)
            return
        raise DatasetError(f"{self.prefix}{where} has no labels: {why}; an image's label file is its path with "
                           f"/images/ replaced by /labels/ and the extension by .txt; add the label files, "
                           f"or pass --allow-unlabelled to use the images as background only")

    def _rect_batches(self, batch_size: int) -> None:
        """Sort by aspect ratio, then give each batch the smallest stride-multiple shape that fits it."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort(kind="stable")
        self.img_files = [self.img_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        ar = ar[order]
        nb = int(self.batch[-1]) + 1
        shapes = np.ones((nb, 2))
        for b in range(nb):
            ari = ar[self.batch == b]
            lo, hi = ari.min(), ari.max()
            if hi < 1:  # all wide: height shrinks
                shapes[b] = (hi, 1)
            elif lo > 1:  # all tall: width shrinks
                shapes[b] = (1, 1 / lo)
        self.batch_shapes = (np.ceil(shapes * self.img_size / self.stride + self.pad).astype(int)
                             * self.stride)  # (nb, 2) as (h, w)

    def _cache_images(self, mode: str, verbose: bool) -> None:
        """Decode every image once: into RAM (resized), or to a .npy beside each image (full size)."""
        if mode not in ("ram", "disk", "True", "true"):
            raise DatasetError(f"--cache {mode}: use 'ram' or 'disk'")
        mode = "disk" if mode == "disk" else "ram"
        nbytes = 0
        for i in range(self.n):
            if mode == "ram":
                self.imgs[i] = self.load_image(i)[0]
                nbytes += self.imgs[i].nbytes
                continue
            npy = Path(self.img_files[i]).with_suffix(".npy")
            if not npy.exists():
                try:
                    atomic_write(npy, _npy_writer(self._read(i)))
                except OSError as e:
                    _say(f"{self.prefix}WARNING disk cache off ({npy.parent} not writable: {e})", verbose)
                    break
            nbytes += npy.stat().st_size
        _say(f"{self.prefix}cached images ({nbytes / 1e9:.2f} GB {mode})", verbose)

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (the samplers of create_dataloader pass it themselves)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), int(index)])

    def _read(self, i: int) -> np.ndarray:
        if self.cache_mode == "disk":
            npy = Path(self.img_files[i]).with_suffix(".npy")
            if npy.exists():
                return np.load(npy)
        img = cv2.imread(self.img_files[i])  # BGR, EXIF orientation applied
        if img is None:
            raise DatasetError(f"{self.img_files[i]}: could not be read although it passed the dataset scan "
                               f"(changed or removed since?); restore it or run again to rescan the dataset")
        return img

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i resized so its long side is img_size: (img, (h0, w0), (h, w)).

        Shrinking for evaluation uses INTER_AREA (no aliasing); training and enlarging use INTER_LINEAR, as
        upstream does, so evaluation numbers match upstream's for the same weights.
        """
        if self.imgs[i] is not None:
            img = self.imgs[i]
            w0, h0 = self.shapes[i]
            return img, (int(h0), int(w0)), img.shape[:2]
        img = self._read(i)
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            img = cv2.resize(img, (int(w0 * r), int(h0 * r)), interpolation=interp)
        return img, (h0, w0), img.shape[:2]

    def _load_mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.img_size
        lo, hi = -self.mosaic_border[0], 2 * s + self.mosaic_border[0]
        yc, xc = (int(v) for v in rng.uniform(lo, hi, 2))
        indices = [index] + [int(k) for k in rng.integers(0, self.n, 3)]
        rng.shuffle(indices)
        images = [self.load_image(k)[0] for k in indices]
        canvas, targets = mosaic4(images, [self.labels[k] for k in indices], s, (xc, yc))
        h = self.hyp
        return random_perspective(canvas, targets, h.get("degrees", 0.0), h.get("translate", 0.0),
                                  h.get("scale", 0.0), h.get("shear", 0.0), h.get("perspective", 0.0),
                                  border=self.mosaic_border, rng=rng)

    def _load_letterboxed(self, index: int, rng: np.random.Generator):
        img, (h0, w0), (h, w) = self.load_image(index)
        if self.augment and self.imgs[index] is not None:
            img = img.copy()  # augmentation works in place; keep the RAM cache pristine
        shape = tuple(self.batch_shapes[self.batch[index]]) if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        shapes = ((h0, w0), ((h * ratio[1] / h0, w * ratio[0] / w0), pad))
        lab = self.labels[index]
        targets = np.zeros((0, 5), np.float32)
        if len(lab):
            targets = np.concatenate((lab[:, :1], xywhn_to_xyxy(lab[:, 1:], ratio[0] * w, ratio[1] * h,
                                                                pad[0], pad[1])), 1)
        if self.augment:
            hp = self.hyp
            img, targets = random_perspective(img, targets, hp.get("degrees", 0.0), hp.get("translate", 0.0),
                                              hp.get("scale", 0.0), hp.get("shear", 0.0),
                                              hp.get("perspective", 0.0), rng=rng)
        return img, targets, shapes

    def __getitem__(self, index):
        index, epoch = (int(index[0]), int(index[1])) if isinstance(index, (tuple, list)) else (int(index), self.epoch)
        rng = self._rng(index, epoch)
        hyp = self.hyp
        if self.mosaic and rng.random() < hyp.get("mosaic", 0.0):
            img, targets = self._load_mosaic(index, rng)
            if rng.random() < hyp.get("mixup", 0.0):
                img, targets = mixup(img, targets, *self._load_mosaic(int(rng.integers(0, self.n)), rng), rng)
            shapes = (img.shape[:2], ((1.0, 1.0), (0.0, 0.0)))
        else:
            img, targets, shapes = self._load_letterboxed(index, rng)
        h, w = img.shape[:2]
        labels = np.zeros((len(targets), 5), np.float32)
        if len(targets):
            labels[:, 0] = targets[:, 0]
            labels[:, 1:] = xyxy_to_xywhn(targets[:, 1:5], w, h, clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(img, hyp.get("hsv_h", 0.0), hyp.get("hsv_s", 0.0), hyp.get("hsv_v", 0.0), rng)
            if rng.random() < hyp.get("flipud", 0.0):
                img = img[::-1]
                labels[:, 2] = 1 - labels[:, 2]
            if rng.random() < hyp.get("fliplr", 0.0):
                img = img[:, ::-1]
                labels[:, 1] = 1 - labels[:, 1]
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels)
        chw = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(chw), out, self.img_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        """Stack images; targets get their image's index in the batch in column 0."""
        imgs, targets, paths, shapes = zip(*batch)
        for i, t in enumerate(targets):
            t[:, 0] = i
        return torch.stack(imgs, 0), torch.cat(targets, 0), paths, shapes


# =========================================================================== samplers and loader
class EpochSampler(Sampler):
    """Yields (index, epoch) so the dataset seeds its augmentation per epoch, in any worker.

    Shuffles with a generator seeded by (seed, epoch). ``set_epoch`` fixes the epoch of the next pass (do
    it every epoch to resume exactly); without it each pass uses the next epoch number.
    """

    def __init__(self, n: int, shuffle: bool = False, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        order = (np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        return iter([(int(i), epoch) for i in order])


class SeededDistributedSampler(DistributedSampler):
    """DistributedSampler whose indices carry the epoch (see EpochSampler); the caller calls set_epoch."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(int(i), epoch) for i in super().__iter__()])


def _seed_worker(worker_id: int) -> None:
    """Seed the global generators of a loader worker (augmentation itself uses per-image generators).

    cv2's thread count is deliberately left alone here: reconfiguring its thread pool in a forked worker
    can deadlock on a condition variable inherited from the parent.
    """
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def create_dataloader(img_files, img_size: int, batch_size: int, stride: int, hyp: dict | None = None,
                      augment: bool = False, rect: bool = False, pad: float = 0.0, workers: int = 0,
                      shuffle: bool = False, seed: int = 0, rank: int = -1, world_size: int = 1,
                      cache: str | None = None, nc: int | None = None, prefix: str = "",
                      allow_unlabelled: bool = False) -> tuple[DataLoader, YoloDataset]:
    """A DataLoader over YoloDataset with seeded sampling and augmentation.

    rank != -1: a DistributedSampler over ``world_size`` processes (call ``loader.sampler.set_epoch``).
    rect: batches in aspect-ratio order with per-batch shapes, never shuffled.
    allow_unlabelled: accept a split without a single box (a warning instead of a DatasetError).
    """
    if rect and shuffle:
        _say(f"{prefix}WARNING rectangular batches cannot be shuffled; shuffle turned off", rank in (-1, 0))
        shuffle = False
    dataset = YoloDataset(img_files, img_size, batch_size, augment=augment, hyp=hyp, rect=rect, stride=stride,
                          pad=pad, cache=cache, nc=nc, prefix=prefix, seed=seed, verbose=rank in (-1, 0),
                          allow_unlabelled=allow_unlabelled)
    batch_size = max(1, min(int(batch_size), len(dataset)))
    if rank != -1:
        sampler = SeededDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                           seed=seed)
    else:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    nw = max(0, min(int(workers), os.cpu_count() or 1))
    generator = torch.Generator()
    generator.manual_seed((int(seed) + 1_000_003 * max(rank, 0)) % 2 ** 63)  # distinct per rank
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=nw,
                        pin_memory=torch.cuda.is_available(), collate_fn=YoloDataset.collate_fn,
                        worker_init_fn=_seed_worker if nw else None, persistent_workers=nw > 0,
                        generator=generator)
    return loader, dataset
