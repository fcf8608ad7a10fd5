"""``python -m nfstudy.train``: train one CIFAR ResNet from the command line (DDP under torchrun)."""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from .config import PRECISIONS, TrainConfig
from .distributed import init_distributed
from .loop import train

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from ..data import DATASETS
    from ..models import INITS, NORMS

    parser = argparse.ArgumentParser(prog="python -m nfstudy.train", description=main.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for history.csv and checkpoint.pt (resumed when present)")
    parser.add_argument("--model", default="resnet20", help="resnet<6n+2>: resnet20, resnet32, resnet56, resnet110, ...")
    parser.add_argument("--norm", default="bn", choices=NORMS)
    parser.add_argument("--init", default="kaiming_fan_out", choices=INITS)
    parser.add_argument("--dataset", default="cifar10", choices=DATASETS)
    parser.add_argument("--image-size", type=int, help="digits / synthetic only")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128, help="global: split across ranks")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=0.0, help="linear lr warmup, per step")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--extend-until-plateau", action="store_true")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto = fp32; bf16: autocast (channels_last on CUDA)")
    parser.add_argument("--sync-batchnorm", action="store_true", help="DDP on CUDA: BatchNorm over the global batch")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m nfstudy.train`` (or ``torchrun --nproc_per_node N -m nfstudy.train``):
    train one CIFAR ResNet, write ``history.csv`` and ``checkpoint.pt`` into ``--out``,
    print the outcome as JSON. Running the same command again resumes."""
    from ..data import load_dataset
    from ..models import create_model

    args = _parser().parse_args(argv)

    rank, world, device = init_distributed(args.device)
    try:
        data = load_dataset(args.dataset, **({"image_size": args.image_size} if args.image_size else {}))
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            augment=not args.no_augment,
            extend_until_plateau=args.extend_until_plateau,
            precision=args.precision,
            sync_batchnorm=args.sync_batchnorm,
            compile=args.compile,
            checkpoint_every=args.checkpoint_every,
        )
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        model = create_model(args.model, args.norm, args.init, num_classes=data.num_classes)
        desc = f"{args.model} {args.norm} lr={args.lr:g}"
        result = train(model, data, config, seed=args.seed, device=device, out_dir=args.out, desc=desc)
        if rank == 0:
            print(json.dumps({**result.summary(), "world_size": world, "images_per_s": result.images_per_s}, default=float))
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0
