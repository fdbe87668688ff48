"""Guard your own model: a plain `nn.Module` and your own tensors -> train -> fit -> calibrate -> evaluate -> save ->
serve. MNIST stands in for your data.

    python examples/guard_your_model.py            # a few minutes on a CPU core
    python examples/guard_your_model.py --serve    # then serves it on http://127.0.0.1:8000 (POST /v1/predict)

The same calls are the README's "Guard your own model" block, which the tests run.
"""

from __future__ import annotations

import argparse

from torch import nn

from latentdefence.data import load_dataset
from latentdefence.data.base import ImageDataset
from latentdefence.dld import DeepLatentDefence, EncoderTrainConfig
from latentdefence.evaluation import ThreatModel, evaluate_detector
from latentdefence.data import calibration_split
from latentdefence.models import as_tapped
from latentdefence.serving import GuardedClassifier
from latentdefence.training import TrainConfig, train_classifier


def main(n_train: int = 10000, n_eval: int = 100, out: str = "runs/mine.safetensors", serve: bool = False) -> None:
    """Train, guard, evaluate and save a small CNN of your own; optionally serve it."""
    mnist = load_dataset("mnist")          # your own (N, C, H, W) float tensors in [0, 1] and int64 labels
    train = ImageDataset(mnist.train.images[:n_train], mnist.train.labels[:n_train])
    calibration_set, held_out = calibration_split(mnist.test, 750)        # clean images, never attacked
    images, labels = held_out.images[:n_eval], held_out.labels[:n_eval]

    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))   # your model
    mine = as_tapped(net, taps=["2", "5"], input_shape=(1, 28, 28), num_classes=10)            # after each pool
    train_classifier(mine, train, TrainConfig(epochs=2, adversarial="pgd", eps=0.3, steps=7))   # or your own loop
    own = DeepLatentDefence(mine, taps=["2", "5"], k=10, latent_dim=16, training=EncoderTrainConfig(epochs=2))
    own.fit(train).calibrate(calibration_set, target_fpr=0.05)
    report = evaluate_detector(own, images, labels, ThreatModel("linf", 0.3), "quick",
                               calibration=calibration_set.images)
    worst = report.results["detectors"]["detector"]["all_attacks"]
    print(f"worst-case robustness {100 * worst['robustness']:.1f}% on {worst['n']} images; "
          f"F alone under the cascade: {100 * report.results['classifier_alone']['autoattack_robust_accuracy_after']['square']:.1f}%")
    own.save(out)
    mine_guarded = GuardedClassifier.load(out, classifier=mine)   # your module: the registry cannot build it
    print("flags on 10 clean images:", mine_guarded.predict(images[:10]).is_adversarial.tolist())
    if serve:
        import uvicorn

        from latentdefence.serving.app import create_app

        uvicorn.run(create_app(mine_guarded), host="127.0.0.1", port=8000)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    main(n_train=args.n_train, serve=args.serve)
