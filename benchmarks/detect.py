"""Cost of DLD-guarded inference against plain F, k-NN backends, and index memory, measured in one run.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detect.py [--train 59000] [--batch 256] [--detector PATH]
     [--backends torch sklearn faiss faiss-hnsw] [--breakdown] [--out docs/results/detect-benchmark]
Target: guarded inference (F + all encoders + k-NN + scoring) costs <= 1.5x F alone at batch 256.

Without --detector the encoders are untrained and the indexes hold clustered synthetic embeddings
(10 Gaussian classes, as a trained latent space looks) of the size of pruned MNIST: timings depend on
sizes, not on trained weights. With --detector a saved artifact is timed, loaded once per backend, on uniform noise and (for an MNIST or
CIFAR-10 artifact) on that dataset's test images (CIFAR-10 from $LATENTDEFENCE_DATA_DIR): exhaustive search costs the same on any input, the pruned "torch" search less
the nearer inputs lie to the indexed data. Each backend's guarded/F ratio is printed, and whether its
neighbours equal the first backend's on the timed batch.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("LATENTDEFENCE_PROGRESS", "0")

from _report import command_line, write_report  # noqa: E402
from latentdefence._io import git_revision  # noqa: E402
from latentdefence.data import load_dataset  # noqa: E402
from latentdefence.detectors import KNNIndex, nonconformity  # noqa: E402
from latentdefence.dld import DeepLatentDefence, make_encoder  # noqa: E402
from latentdefence.dld.encoders import activation_shape  # noqa: E402
from latentdefence.models import create_model  # noqa: E402


def best_of(fn: Callable[[], object], repeats: int = 5, clock: Callable[[], float] = time.perf_counter) -> float:
    """Fastest of a few runs (seconds of `clock`), after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def clustered(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n embeddings in 10 Gaussian clusters, with their labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen)
    centres = 3 * torch.randn(10, dim, generator=gen)
    return centres[labels] + torch.randn(n, dim, generator=gen), labels


def synthetic_detector(n_train: int, backend: str, algorithm: str) -> DeepLatentDefence:
    """dld_mnist with three untrained encoders and clustered indexes (fitted state set directly)."""
    model = create_model("dld_mnist").eval()
    det = DeepLatentDefence(model, ("layer1", "layer2", "layer3"), knn_backend=backend, knn_algorithm=algorithm)
    det.encoders_ = nn.ModuleDict({t: make_encoder(activation_shape(model, t), 10) for t in det.taps}).eval()
    det._build_indexes({t: clustered(n_train, 10, i) for i, t in enumerate(det.taps)})
    return det


def guarded_ratio(det: DeepLatentDefence, x: torch.Tensor) -> dict[str, float]:
    """Seconds per batch for F alone and for F + encoders + k-NN + Eq. 8, and their ratio: wall time, and this
    thread's CPU time (steadier where other jobs share the cores: waiting for a core does not count)."""
    det.batch_size = len(x)
    out = {}
    for name, clock in (("", time.perf_counter), ("cpu_", time.thread_time)):
        with torch.no_grad():
            plain = best_of(lambda: det.classifier(x), clock=clock)
        guarded = best_of(lambda: det.nonconformity(x), clock=clock)
        out.update({f"{name}plain_s": plain, f"{name}guarded_s": guarded, f"{name}ratio": guarded / plain})
    return out


def breakdown(det: DeepLatentDefence, x: torch.Tensor) -> dict[str, float]:
    """This thread's CPU seconds per batch for each part of a guarded prediction, each timed alone: F's pass that keeps
    the taps' activations, each tap's encoder, each tap's k-NN search, and Eq. 8 (why: which part a speed-up must cut,
    and the floor the encoders alone set for guarded/F)."""
    taps = list(det.indexes_)
    clock = time.thread_time
    with torch.no_grad():
        acts = det.classifier.intermediates(x, taps)
        last = det.classifier.deepest_tap(taps)
        out = {"forward_with_taps": best_of(lambda: det.classifier.forward_from(
            det.classifier.intermediates(x, taps)[last], last), clock=clock)}
        latents = {tap: det.encoders_[tap](acts[tap]) for tap in taps}
        for tap in taps:
            out[f"encoder_{tap}"] = best_of(lambda: det.encoders_[tap](acts[tap]), clock=clock)
        found = {}
        for tap in taps:
            out[f"search_{tap}"] = best_of(lambda: det.indexes_[tap].search(latents[tap], det.k), clock=clock)
            found[tap] = det.indexes_[tap].search(latents[tap], det.k)[1]
        predicted = det.classifier(x).argmax(1)
        out["eq8"] = best_of(lambda: [nonconformity(det.indexes_[t].labels[found[t]], predicted) for t in taps],
                             clock=clock)
    return out


def encoder_macs(det: DeepLatentDefence) -> tuple[int, int]:
    """Multiply-adds per image of F and of all the encoders together (convolutions and linear layers)."""
    def count(module: nn.Module, shape: tuple[int, ...]) -> int:
        total = 0

        def hook(layer: nn.Module, _: object, output: torch.Tensor) -> None:
            nonlocal total
            if isinstance(layer, nn.Conv2d):
                total += output[0].numel() * layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            elif isinstance(layer, nn.Linear):
                total += layer.in_features * layer.out_features
        handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            module(torch.zeros(1, *shape))
        for h in handles:
            h.remove()
        return total
    model = det.classifier
    f = count(model, tuple(model.input_shape))
    enc = sum(count(det.encoders_[tap], activation_shape(model, tap)) for tap in det.indexes_)
    return f, enc


def backend_rates(n: int, dim: int, queries: int, k: int) -> dict[str, float]:
    """Queries per second of each backend on the issue's setting (n x dim, k); faiss-hnsw is approximate."""
    data, labels = clustered(n, dim)
    q = clustered(queries, dim, seed=1)[0]
    rates = {}
    trees = [("sklearn", "kd_tree")] if dim <= 16 else []                 # k-d trees are hopeless in 100-d
    for backend, algorithm in [("torch", "pruned"), ("sklearn", "brute"), *trees, ("faiss", "flat"),
                               ("faiss-hnsw", "M32-ef64")]:
        index = KNNIndex(backend, algorithm if backend == "sklearn" else "auto")  # faiss imported here, last
        index.add(data, labels)
        rates[f"{backend}-{algorithm}"] = queries / best_of(lambda: index.search(q, k), repeats=2)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=59000, help="indexed training points per encoder")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--detector", default=None, help="a saved detector artifact to time instead")
    parser.add_argument("--backends", nargs="+", default=["torch", "sklearn"], help="k-NN backends to time, in turn")
    parser.add_argument("--algorithm", default="brute", help="sklearn's algorithm")
    parser.add_argument("--dims", type=int, nargs="+", default=[10], help="latent sizes for the backend comparison")
    parser.add_argument("--breakdown", action="store_true", help="also time each part of a guarded prediction alone")
    parser.add_argument("--out", type=Path, default=None, help="write report.md and results.json here")
    args = parser.parse_args()
    lines, results = [f"torch threads {torch.get_num_threads()}, git {git_revision()}"], {}
    load_before = os.getloadavg()
    first: dict[str, dict[str, torch.Tensor]] = {}
    inputs: dict[str, torch.Tensor] = {}
    for backend in args.backends:
        det = (DeepLatentDefence.load(args.detector, knn_backend=backend) if args.detector
               else synthetic_detector(args.train, backend, args.algorithm))
        inputs.setdefault("noise", torch.rand(args.batch, *det.classifier.input_shape))   # the detector's own shape
        dataset = getattr(det, "metadata_", {}).get("dataset")
        if dataset in ("mnist", "cifar10") and dataset not in inputs:   # cifar10: LATENTDEFENCE_DATA_DIR
            inputs[dataset] = load_dataset(dataset).test.images[:args.batch]
        for name, x in inputs.items():
            r = guarded_ratio(det, x)
            found = {tap: idx for tap, (idx, _) in det.neighbours(x).items()}
            same = all(torch.equal(first.setdefault(name, {}).setdefault(tap, idx), idx) for tap, idx in found.items())
            results[f"{backend}_{name}"] = {**r, "same_neighbours_as_first": same}
            if args.breakdown:
                parts = breakdown(det, x)
                results[f"{backend}_{name}"]["breakdown_cpu_s"] = parts
                lines.append(f"  CPU per part, x F's plain pass ({1e3 * r['cpu_plain_s']:.1f} ms): " + ", ".join(
                    f"{part} {v / r['cpu_plain_s']:.2f}" for part, v in parts.items()))
            lines.append(f"batch {args.batch} {name}: F {1e3 * r['plain_s']:.1f} ms, guarded {1e3 * r['guarded_s']:.1f} ms, "
                         f"guarded/F {r['ratio']:.2f}x (target <= 1.5x); CPU: F {1e3 * r['cpu_plain_s']:.1f} ms, guarded "
                         f"{1e3 * r['cpu_guarded_s']:.1f} ms, {r['cpu_ratio']:.2f}x [{backend}], neighbours "
                         f"{'equal to' if same else 'DIFFER from'} {args.backends[0]}'s")
    if args.breakdown:
        f_macs, enc_macs = encoder_macs(det)
        results["macs_per_image"] = {"classifier": f_macs, "encoders": enc_macs}
        lines.append(f"multiply-adds per image: F {f_macs / 1e6:.2f}M, all encoders {enc_macs / 1e6:.2f}M "
                     f"({enc_macs / f_macs:.2f}x F)")
    for tap, index in det.indexes_.items():
        lines.append(f"index {tap}: {len(index)} points, {index.nbytes() / len(index):.0f} bytes/point [{backend}]")
    for dim in args.dims:
        rates = backend_rates(50_000, dim, 10_000, 10)
        results[f"knn_rates_{dim}d"] = rates
        lines.append(f"k-NN 50k x {dim}-d, 10k queries, k=10: "
                     + ", ".join(f"{k} {v / 1e3:.1f}k q/s" for k, v in rates.items()))
    lines.append(f"load average (1, 5, 15 min) before {tuple(round(v, 2) for v in load_before)}, "
                 f"after {tuple(round(v, 2) for v in os.getloadavg())} on {os.cpu_count()} cores")
    print("\n".join(lines))
    if args.out:
        write_report(args.out, "Guarded inference benchmark", command_line("detect.py", "OMP_NUM_THREADS=1 "), args,
                     {"results": results}, lines)

if __name__ == "__main__":
    main()
