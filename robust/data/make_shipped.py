"""Build the MNIST file shipped inside the package (see SOURCE.md beside this module).

    python -m robust.data.make_shipped FULL_MNIST.npz [--train N]

reads a Keras-layout ``mnist.npz``, keeps a class-balanced subset of ``N``
training images (seed 0; all of them by default) and the whole test split, as
uint8, and writes them xz-compressed to ``robust/data/mnist.npz.xz``: xz packs
MNIST about 20% smaller than the zip inside a compressed ``.npz``.
"""

from __future__ import annotations

import argparse
import io
import lzma
from pathlib import Path

import numpy as np

from robust.data import SHIPPED_MNIST, balanced_indices


def pack(source: Path, train_images: int | None) -> bytes:
    with np.load(source, allow_pickle=False) as f:
        x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    keep = balanced_indices(y_train, train_images or len(y_train), seed=0)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=x_train[keep].astype(np.uint8), y_train=y_train[keep].astype(np.uint8),
             x_test=x_test.astype(np.uint8), y_test=y_test.astype(np.uint8))
    return lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a Keras-layout mnist.npz")
    parser.add_argument("--train", type=int, default=None, help="training images to keep (default: all)")
    args = parser.parse_args()
    target = Path(__file__).with_name(SHIPPED_MNIST)
    target.write_bytes(pack(args.source, args.train))
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
