"""Write the two request files of the README's curl examples into the current folder (or --out):

- ``boot.png``: the first Fashion-MNIST test image (an ankle boot), for ``curl -F files=@boot.png .../v1/predict``;
- ``v2.json``: the first two test images as an Open Inference Protocol request (one ``UINT8`` tensor
  ``[2, 1, 28, 28]``), for ``curl -d @v2.json .../v2/models/teacher/infer``.

    python scripts/example_inputs.py [--out DIR] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from training.console import USER_ERRORS
from training.data import load_dataset


def write_examples(out: Path, data_root: str | None = None) -> tuple[Path, Path]:
    """Write ``out/boot.png`` and ``out/v2.json`` from the Fashion-MNIST test split; their paths."""
    images = load_dataset("fashion-mnist", "test", data_root).images[:2]
    out.mkdir(parents=True, exist_ok=True)
    png, request = out / "boot.png", out / "v2.json"
    Image.fromarray(images[0, 0].numpy()).save(png, format="PNG")
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.flatten().tolist()}
    request.write_text(json.dumps({"inputs": [tensor]}) + "\n")
    return png, request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder to write into (default: the current one)")
    parser.add_argument("--data-root", help="folder holding Fashion-MNIST (default: /usr/share/datasets/fashion-mnist)")
    args = parser.parse_args(argv)
    try:
        png, request = write_examples(args.out, args.data_root)
    except USER_ERRORS as error:
        print(f"example_inputs: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {png} and {request}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
