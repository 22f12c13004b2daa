"""``stingy-train import``: the command line of :mod:`training.importer`.

    stingy-train import --arch torchvision:resnet50 --weights model.pth --class-names classes.txt --out model.safetensors
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.checkpoint import save_checkpoint
from training.console import UsageError
from training.data import dataset_names, load_dataset
from training.importer import ImportFailure, ImportOptions, import_model, measure_accuracy, read_class_names
from training.preprocess import INTERPOLATIONS, PreparationError

IMPORT_ERRORS: tuple[type[BaseException], ...] = (ImportFailure, PreparationError)


def add_import_parser(commands: Any) -> None:
    """Add the ``import`` subcommand to ``stingy-train``'s subparsers."""
    sub = commands.add_parser("import", help="make a servable checkpoint from a model trained elsewhere (a state_dict file)")
    sub.add_argument("--arch", required=True, metavar="ARCH", help="torchvision:NAME (any torchvision classification model) or a `stingy-train models` name")
    sub.add_argument("--weights", required=True, type=Path, metavar="FILE", help="state_dict: .pth/.pt (read with weights_only=True) or .safetensors")
    sub.add_argument("--out", required=True, type=Path, metavar="FILE", help="checkpoint to write (.safetensors)")
    sub.add_argument("--force", action="store_true", help="replace --out if it exists")
    sub.add_argument("--num-classes", type=int, metavar="K", help="outputs of the model (default: the class names' count, else read from the weights' head)")
    sub.add_argument("--class-names", type=Path, metavar="FILE", help="text file, one class name per line in class-index order")
    prep = sub.add_argument_group("input (defaults for torchvision:NAME: its default weights' transforms)")
    prep.add_argument("--image-size", type=int, metavar="PX", help="model input side (the centre crop)")
    prep.add_argument("--resize-size", type=int, metavar="PX", help="resize the shorter side to this before the centre crop")
    prep.add_argument("--stretch", action="store_true", help="resize the whole image to --image-size instead (aspect ratio not kept)")
    prep.add_argument("--interpolation", choices=INTERPOLATIONS, help="resampling filter (default bilinear)")
    prep.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean of the normalisation (default ImageNet's)")
    prep.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel standard deviation (default ImageNet's)")
    prep.add_argument("--in-channels", type=int, default=3, metavar="C", help="input channels (1 or 3; torchvision models take 3; default %(default)s)")
    test = sub.add_argument_group("optional accuracy check")
    test.add_argument("--test-data", choices=dataset_names(), help="measure accuracy on this dataset's test split into the card")
    test.add_argument("--data-root", metavar="DIR", help="folder holding --test-data (imagefolder: train/<class>/ and val/<class>/)")
    sub.set_defaults(handler=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out} exists; pass --force to replace it")
    options = ImportOptions(
        arch=args.arch, weights=args.weights, num_classes=args.num_classes,
        class_names=read_class_names(args.class_names) if args.class_names else None, image_size=args.image_size,
        resize_size=args.resize_size, stretch=args.stretch, interpolation=args.interpolation,
        mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
        in_channels=args.in_channels, dataset=args.test_data or "imported",
    )
    model, card = import_model(options)
    if args.test_data:
        test = load_dataset(args.test_data, "test", args.data_root, image_size=card.image_size)
        card = replace(card, test_accuracy=measure_accuracy(model, card, test))
    save_checkpoint(args.out, model, card)
    accuracy = "" if card.test_accuracy is None else f", test accuracy {card.test_accuracy:.2f}% on {args.test_data}"
    print(f"imported {card.arch}: {card.num_classes} classes, input {card.in_channels}x{card.image_size}x{card.image_size} "
          f"({card.preparation.describe()}){accuracy} -> {args.out}")
    return 0
