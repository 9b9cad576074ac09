"""Synthetic shapes: a seeded, COCO-format instance-segmentation dataset.

Used for CPU demos, CI tests and overfit runs. ``generate_shapes`` writes (or reuses) the
dataset at a root: the scenes of ``datamodules.scenes`` (8 shape classes, occlusion, clutter,
every COCO area range, empty images and crowd regions), in one of ``LAYOUTS``:

- ``layout="coco"`` (default), written by ``datamodules.coco_writer``::

    root/images/train/000000000001.jpg ...      file_name is relative to images/<split>/
    root/images/val/...
    root/annotations/instances_train.json
    root/annotations/instances_val.json
    root/.complete                              written last: generator version + arguments

- ``layout="coco2017"``: COCO 2017's folders and file names (train2017/, val2017/,
  annotations/instances_{train,val}2017.json) and COCO's 80 categories, the shapes annotated
  with 8 of them (see ``datamodules.synthetic_coco2017``);
- ``layout="cityscapes"``: Cityscapes' layout (leftImg8bit/, gtFine/ instance-id PNGs and
  polygons; see ``datamodules.synthetic_cityscapes``).

The files are byte-identical for the same arguments, whatever the number of worker
processes; the folder is published atomically (``datamodules.publish``).

CLI: ``python -m datamodules.synthetic --root DIR [--num-train N --num-val N --seed S]
[--workers W] [--layout {coco,coco2017,cityscapes}]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from datamodules.coco_writer import COCO_FILES, CocoFiles, dataset_stats, write_coco_split
from datamodules.publish import is_complete, publish
from datamodules.scenes import CATEGORIES, GENERATOR_VERSION

# the generator's interface; CATEGORIES and dataset_stats are re-exported for its callers
__all__ = ["CATEGORIES", "LAYOUTS", "dataset_stats", "generate_shapes", "main"]

LAYOUTS = ("coco", "coco2017", "cityscapes")


def _coco_files(layout: str) -> CocoFiles:
    """The ``CocoFiles`` of a COCO-format layout (``coco`` or ``coco2017``)."""
    if layout == "coco2017":
        # imported here: that module imports torchvision, which the default layout does not need
        from datamodules.synthetic_coco2017 import COCO2017_FILES

        return COCO2017_FILES
    return COCO_FILES


def _write_layout(
    root: Path,
    layout: str,
    num_train: int,
    num_val: int,
    seed: int,
    imap: Callable[..., Iterator],
) -> None:
    """Write the train and val splits of ``layout`` (one of ``LAYOUTS``) into ``root``."""
    if layout == "cityscapes":
        # imported here: that module imports torch, which the default layout does not need
        from datamodules.synthetic_cityscapes import write_cityscapes_split

        write_cityscapes_split(root, "train", num_train, seed, imap)
        write_cityscapes_split(root, "val", num_val, seed, imap)
        return
    files = _coco_files(layout)
    train = write_coco_split(root, "train", num_train, seed, 1, 1, imap, files)
    val_first_ann = train["instances"] + train["crowd"] + 1
    write_coco_split(root, "val", num_val, seed, num_train + 1, val_first_ann, imap, files)


def _marker(num_train: int, num_val: int, seed: int) -> dict:
    return {
        "generator": "synthetic_shapes",
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
    }


def _default_workers(num_images: int) -> int:
    """Worker processes for ``num_images``: none for small sets, where starting them costs
    more than they save."""
    if num_images < 200 or multiprocessing.current_process().daemon:
        return 0  # daemonic processes (e.g. DataLoader workers) may not have children
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cpus or 1) if (cpus or 1) > 1 else 0


@contextmanager
def _image_map(workers: int) -> Iterator[Callable[..., Iterator]]:
    """``map``, or an ordered ``imap`` over ``workers`` processes, stopped on exit."""
    # spawn, not fork: the caller may hold torch threads or CUDA state.
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else None
    try:
        yield partial(pool.imap, chunksize=4) if pool is not None else map
    finally:
        if pool is not None:
            pool.terminate()


def generate_shapes(
    root: str | Path,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    workers: int | None = None,
    layout: str = "coco",
) -> Path:
    """Write (or reuse) the synthetic COCO dataset at ``root``; returns ``root``.

    Image ids run 1..num_train (train) then num_train+1.. (val); annotation ids are unique
    across both splits. The dataset is built in a temporary folder next to root and renamed
    into place, with ``root/.complete`` written last, so an interrupted run never leaves a
    folder that looks complete. Safe to call from several processes at once (DDP ranks).

    workers: processes rendering images (0: in this process; None: by size and CPU count).
    The files are byte-identical whatever the number of workers.
    layout: one of ``LAYOUTS``: ``coco`` (the default layout), ``coco2017`` (COCO 2017's
    folders and 80 categories) or ``cityscapes``, all holding the same scenes.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"generate_shapes: layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root)
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"generate_shapes: {name} must be a non-negative int, got {value!r}")
    marker = _marker(num_train, num_val, seed)
    if layout != "coco":  # COCO folders written before layouts existed stay valid
        marker["layout"] = layout
    if is_complete(root, marker):
        return root
    if workers is None:
        workers = _default_workers(num_train + num_val)
    with _image_map(workers) as imap:
        return publish(
            root, marker, lambda tmp: _write_layout(tmp, layout, num_train, num_val, seed, imap)
        )


def _summary_title(root: Path, layout: str) -> str:
    """First line of the CLI summary: where the dataset is and its categories."""
    if layout == "cityscapes":
        return (
            f"synthetic shapes in the Cityscapes layout at {root} (classes: see "
            "datamodules/synthetic_cityscapes.py)"
        )
    files = _coco_files(layout)
    ids = [c["id"] for c in files.categories]
    if layout == "coco":
        return f"synthetic shapes at {root} ({len(ids)} classes, ids {ids})"
    names = {c["id"]: c["name"] for c in files.categories}
    shapes = ", ".join(
        f"{c['name']} -> {i} {names[i]}" for c, i in zip(CATEGORIES, files.shape_ids, strict=True)
    )
    return (
        f"synthetic shapes in the COCO 2017 layout at {root} ({len(ids)} COCO categories, "
        f"ids {ids[0]}..{ids[-1]}; annotated: {shapes})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset folder to write (or reuse)")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="0: no worker processes")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="coco",
        help="coco: images/<split>/ and the 8 shape categories; coco2017: COCO 2017's folders "
        "and 80 categories; cityscapes: leftImg8bit/ and gtFine/",
    )
    args = parser.parse_args(argv)
    root = generate_shapes(
        args.root, args.num_train, args.num_val, args.seed, args.workers, args.layout
    )
    print(_summary_title(root, args.layout))
    if args.layout == "cityscapes":
        return
    stats = dataset_stats(root)
    width = max(map(len, stats), default=0)
    for split, s in stats.items():
        print(
            f"  {split:{width}s}: {s['images']} images ({s['empty_images']} empty), "
            f"{s['instances']} instances (small {s['small']}, medium {s['medium']}, "
            f"large {s['large']}; {s['occluded']} partly occluded), {s['crowd']} crowd "
            f"regions, {s['dropped']} dropped as (nearly) fully occluded"
        )


if __name__ == "__main__":
    main()
