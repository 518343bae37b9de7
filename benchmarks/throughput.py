"""Trainer throughput against a bare segmentation-models-pytorch loop.

Both train the same DeepLabV3+ (A1: segmentation only, so the bare loop is an exact twin)
with the same batch, input size and optimiser on the same generated images; the figure of
merit is images per second over the timed steps:

    python benchmarks/throughput.py --size 128 --batch 10 --steps 30
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from napari_recist_seg import recist_from_mask
from napari_recist_seg.data.samples import dermoscopy_dataset
from napari_recist_seg.learning.models import build_model
from napari_recist_seg.learning.preparation import prepare_whole_images
from napari_recist_seg.learning.trainer import TrainConfig, train


def bare_loop(data, config, steps, warmup):
    """A plain smp training loop over pre-made tensors: the upper bound on speed."""
    torch.manual_seed(0)
    model = build_model("a1", encoder=config.encoder, input_size=config.input_size)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    bce = torch.nn.BCEWithLogitsLoss()
    n = len(data)
    images = torch.stack([data[i]["image"] for i in range(n)])
    masks = torch.stack([data[i]["mask"] for i in range(n)])
    b = config.batch_size
    times = []
    for step in range(warmup + steps):
        idx = torch.arange(step * b, step * b + b) % n
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = 100 * bce(model(images[idx]), masks[idx])
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return b * len(times) / sum(times)


def trainer_loop(data, config, steps, warmup):
    """The library's trainer, timed from its own step events (wall clock between them)."""
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        for event in train(data.train_set, data.val_set, config, out):
            if event.kind == "step":
                stamps.append(time.perf_counter())
                if len(stamps) > warmup + steps:
                    break
    span = stamps[-1] - stamps[warmup]
    return config.batch_size * (len(stamps) - 1 - warmup) / span


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    # Enough images that one epoch outlasts the timed steps (no validation inside the timing).
    n = int(args.batch * (args.steps + args.warmup + 5) / 0.95) + 1
    images, masks = dermoscopy_dataset(n, size=128)
    recists = [recist_from_mask(m) for m in masks]
    data = prepare_whole_images(images, recists, size=args.size, k=4, val_fraction=0.05)
    config = TrainConfig(kind="a1", encoder=args.encoder, input_size=args.size,
                         batch_size=args.batch, epochs=1000, patience=1000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, encoder "
          f"{args.encoder}, input {args.size}, batch {args.batch}, {args.steps} timed steps")
    bare, ours = [], []
    for _ in range(args.repeats):
        # Interleave the two so that machine load drifts affect both alike.
        bare.append(bare_loop(data.train_set, config, args.steps, args.warmup))
        ours.append(trainer_loop(data, config, args.steps, args.warmup))
    b, o = float(np.median(bare)), float(np.median(ours))
    print(f"bare smp loop : {b:.2f} images/s  (runs {', '.join(f'{v:.2f}' for v in bare)})")
    print(f"trainer       : {o:.2f} images/s  (runs {', '.join(f'{v:.2f}' for v in ours)})")
    print(f"trainer / bare: {100 * o / b:.1f} %")


if __name__ == "__main__":
    main()
