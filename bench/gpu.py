"""VGG-11 on the CIFAR-10 images on one GPU without TensorFlow: training and PGD-20 throughput, GPU utilisation.

The measurement half of ``bench/gpu.sh`` (which installs the project first);
run it directly where ``robust`` is installed. Keras runs on the backend
``KERAS_BACKEND`` names (``jax`` unless set). It prints, for training and
for the attack, images per second of the warm phase (the first epoch and
the first attack call compile, and are timed separately) and the GPU's
utilisation sampled every 0.2 s by ``nvidia-smi`` while each phase runs.

    KERAS_BACKEND=jax python bench/gpu.py                  # on the GPU machine
    KERAS_BACKEND=jax python bench/gpu.py --smoke          # anywhere: a few hundred images on the CPU

Figures are printed, never asserted. Data: ``$ROBUST_DATA_DIR/cifar10.npz``
(or the Keras cache); the machine has no network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time

os.environ.setdefault("KERAS_BACKEND", "jax")


class Utilisation:
    """GPU utilisation (%) sampled by ``nvidia-smi`` in a thread while a ``with`` block runs."""

    def __init__(self, every: float = 0.2):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _sample(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                util, memory = done.stdout.strip().splitlines()[0].split(",")
                self.samples.append((float(util), float(memory)))
            self._stop.wait(self.every)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    def describe(self) -> str:
        if not self.samples:
            return "GPU utilisation n/a (no nvidia-smi)" if not self.available else "GPU utilisation n/a (no samples)"
        utils = sorted(u for u, _ in self.samples)
        return (f"GPU utilisation mean {sum(utils) / len(utils):.0f}%, median {utils[len(utils) // 2]:.0f}% "
                f"({len(utils)} samples), memory up to {max(m for _, m in self.samples):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a check that runs anywhere: 512 training and 128 attacked images, width 0.25, 2 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 5; 2 with --smoke)")
    parser.add_argument("--batch-size", type=int, default=256, help="training and attack batch size (default 256)")
    parser.add_argument("--images", type=int, default=None, help="test images attacked (default 2000; 128 smoke)")
    parser.add_argument("--mixed-precision", action="store_true", help="train in bfloat16 (JAX) / float16 (GPU)")
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.smoke else 5)
    images = args.images or (128 if args.smoke else 2000)

    from robust import backend
    from robust.attacks import PGD
    from robust.data import load_dataset
    from robust.training import train

    found = backend.device()
    print(f"gpu bench: Keras backend {backend.NAME}, {found['description']}; versions {backend.versions()}",
          flush=True)
    if not found["gpus"] and not args.smoke:
        sys.exit("gpu bench: the backend sees no GPU. Check `nvidia-smi` and that jax is the CUDA build "
                 "(python -c 'import jax; print(jax.devices())'), or pass --smoke for the CPU check.")
    data = load_dataset("cifar10")
    if args.smoke:
        data = data.limited(512, seed=0)
    options = {"width": 0.25, "batch_norm": True} if args.smoke else {"batch_norm": True}

    with Utilisation() as train_gpu:
        result = train("vgg11", data, epochs=epochs, batch_size=args.batch_size, lr=1e-3, seed=0, progress=False,
                       model_options=options, mixed_precision=args.mixed_precision, log=print)
    seconds, n_fit = result.epoch_seconds, result.card["train_size"]
    warm = seconds[1:] or seconds
    print(f"training: VGG-11 {options}, {n_fit:,} images x {epochs} epochs, batch {args.batch_size}: "
          f"first epoch {seconds[0]:.1f} s (compiles), warm {n_fit * len(warm) / sum(warm):,.0f} images/s; "
          f"test accuracy {result.card['test_accuracy']:.4f}; {train_gpu.describe()}", flush=True)

    x, y = data.x_test[:images], data.y_test[:images]
    attack = PGD(eps=8 / 255, steps=20, seed=0)
    timed = []
    with Utilisation() as attack_gpu:
        for _ in range(2):
            start = time.perf_counter()
            adv = attack(result.model, x, y, batch_size=args.batch_size, progress=False)
            timed.append(time.perf_counter() - start)
    print(f"attack: PGD-20 L-inf eps 8/255 on {len(x):,} test images, batch {args.batch_size}: first call "
          f"{timed[0]:.1f} s (compiles), warm {len(x) / timed[1]:,.0f} images/s; clean {adv.clean_accuracy:.4f}, "
          f"PGD {adv.adversarial_accuracy:.4f}; {attack_gpu.describe()}", flush=True)


if __name__ == "__main__":
    main()
