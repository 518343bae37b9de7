"""Trainer throughput against a bare segmentation-models-pytorch loop.

Both train the same DeepLabV3+ (A1: segmentation only, so the bare loop is an exact twin)
with the same batch, input size, optimiser and speed settings (device, mixed precision,
memory layout) on the same generated images; the figure of merit is images per second over
the timed steps. The bare loop reads pre-made tensors already on the device, so it is the
upper bound; the trainer builds each batch from the data set (through ``--workers``
DataLoader processes) and reports, validates and checkpoints as it does for real:

    python benchmarks/throughput.py --size 128 --batch 10 --steps 30
    python benchmarks/throughput.py --device cuda --size 256 --batch 32 --amp auto
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from napari_recist_seg import recist_from_mask
from napari_recist_seg.data.samples import dermoscopy_dataset
from napari_recist_seg.learning.devices import amp_dtype, default_workers, pick_device
from napari_recist_seg.learning.models import build_model
from napari_recist_seg.learning.preparation import prepare_whole_images
from napari_recist_seg.learning.trainer import TrainConfig, train


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(data, config, steps, warmup):
    """A plain smp training loop over pre-made tensors on the device: the upper bound on
    speed, with the trainer's mixed precision and memory layout."""
    device = pick_device(config.device)
    amp = amp_dtype(config.amp, device)
    torch.manual_seed(0)
    model = build_model("a1", encoder=config.encoder, input_size=config.input_size).to(device)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    bce = torch.nn.BCEWithLogitsLoss()
    n = len(data)
    images = torch.stack([data[i]["image"] for i in range(n)]).to(device)
    images = images.contiguous(memory_format=layout)
    masks = torch.stack([data[i]["mask"] for i in range(n)]).to(device)
    b = config.batch_size
    times = []
    for step in range(warmup + steps):
        idx = (torch.arange(step * b, step * b + b) % n).to(device)
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(images[idx])
        loss = 100 * bce(logits.float(), masks[idx])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        _sync(device)
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
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--workers", type=int, default=None,
                        help="trainer DataLoader workers (default: the trainer's default for "
                             "the device)")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision of both loops (default: %(default)s)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last memory layout in both loops")
    args = parser.parse_args(argv)
    device = pick_device(args.device)

    # Enough images that one epoch outlasts the timed steps (no validation inside the timing).
    n = int(args.batch * (args.steps + args.warmup + 5) / 0.95) + 1
    images, masks = dermoscopy_dataset(n, size=128)
    recists = [recist_from_mask(m) for m in masks]
    data = prepare_whole_images(images, recists, size=args.size, k=4, val_fraction=0.05)
    config = TrainConfig(kind="a1", encoder=args.encoder, input_size=args.size,
                         batch_size=args.batch, epochs=1000, patience=1000, device=str(device),
                         num_workers=args.workers, amp=args.amp,
                         channels_last=args.channels_last)
    workers = default_workers(device) if args.workers is None else args.workers
    amp = amp_dtype(args.amp, device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"encoder {args.encoder}, input {args.size}, batch {args.batch}, {args.steps} timed "
          f"steps, {workers} trainer workers, amp {str(amp).replace('torch.', '')}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}")
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
