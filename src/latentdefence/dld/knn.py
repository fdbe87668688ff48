"""k-nearest-neighbour search in a latent space behind a two-call surface (add / search).

Backends (chosen by ``benchmarks/detect.py``, never a hand-written search):

* ``"sklearn"``: scikit-learn ``NearestNeighbors`` (``algorithm`` "brute" (default: fastest measured, 10-d and 100-d) | "kd_tree" | "ball_tree" | "auto");
* ``"faiss"``: FAISS ``IndexFlatL2``. FAISS ships its own OpenMP runtime, so it is imported only when
  this backend is chosen, keeping the default process to the one runtime torch brings.
* ``"faiss-hnsw"``: FAISS ``IndexHNSWFlat`` (M = ``hnsw_m``, efSearch = ``ef_search``): approximate,
  for when exact search is the bottleneck of guarded inference. Its recall against exact search is
  tested; what it buys is measured by ``benchmarks/detect.py``.

Distances are Euclidean (FAISS's squared distances are square-rooted) so backends agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BACKENDS = ("sklearn", "faiss", "faiss-hnsw")


class KNNIndex:
    """Labelled embeddings with L2 k-NN search (exact, or approximate with "faiss-hnsw")."""

    def __init__(self, backend: str = "sklearn", algorithm: str = "brute", hnsw_m: int = 32,
                 ef_search: int = 64) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown k-NN backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.algorithm = algorithm
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.embeddings = torch.empty(0, 0)
        self.labels = torch.empty(0, dtype=torch.int64)
        self._impl: Any = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def add(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Append embeddings (N, d) float with labels (N,) int64."""
        embeddings = _as_matrix(embeddings, "embeddings")
        if labels.shape != embeddings.shape[:1] or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 shaped ({embeddings.shape[0]},), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        if len(self) and embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embedding dim {embeddings.shape[1]} != index dim {self.embeddings.shape[1]}")
        self.embeddings = embeddings if not len(self) else torch.cat([self.embeddings, embeddings])
        self.labels = torch.cat([self.labels, labels.cpu()])
        self._impl = self._build(self.embeddings.numpy())

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances (Q, k) float32 ascending, indices (Q, k) int64) of the k nearest stored points."""
        queries = _as_matrix(queries, "queries")
        if not len(self):
            raise RuntimeError("search on an empty k-NN index; call add() first")
        if not 0 < k <= len(self):
            raise ValueError(f"k must be in 1..{len(self)} (index size), got {k}")
        if queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"query dim {queries.shape[1]} != index dim {self.embeddings.shape[1]}")
        q = queries.numpy()
        if self.backend.startswith("faiss"):
            dist, idx = self._impl.search(q, k)
            dist = np.sqrt(np.maximum(dist, 0.0))
        else:
            dist, idx = self._impl.kneighbors(q, n_neighbors=k)
        return torch.from_numpy(np.ascontiguousarray(dist, dtype=np.float32)), torch.from_numpy(idx.astype(np.int64))

    def neighbour_labels(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Labels (Q, k) of each query's k nearest stored points (the multiset Omega_N of Eq. 8)."""
        return self.labels[self.search(queries, k)[1]]

    def class_neighbours(self, queries: torch.Tensor, classes: torch.Tensor, m: int) -> torch.Tensor:
        """Indices (Q, m) of each query's m nearest stored points labelled `classes` (Q,), nearest first: the
        guide points of a soft-kNN attack; -1 fills the columns a class has too few points for. Exact, in torch."""
        queries = _as_matrix(queries, "queries")
        if classes.shape != queries.shape[:1]:
            raise ValueError(f"classes must be shaped ({queries.shape[0]},), got {tuple(classes.shape)}")
        out = torch.full((len(queries), m), -1, dtype=torch.int64)
        for c in classes.unique().tolist():
            rows = (classes == c).nonzero().squeeze(1).cpu()
            members = (self.labels == c).nonzero().squeeze(1)
            if len(members) == 0:
                continue
            dist = torch.cat([torch.cdist(queries[rows[i:i + 1024]], self.embeddings[members])
                              for i in range(0, len(rows), 1024)])             # (R, members)
            near = dist.topk(min(m, len(members)), dim=1, largest=False).indices
            out[rows[:, None], torch.arange(near.shape[1])] = members[near]
        return out

    def nbytes(self) -> int:
        """Memory held: our embeddings and labels plus the backend's own copy of the data."""
        if self.backend == "faiss-hnsw":  # vectors plus the graph's links (2M at level 0, int32)
            backend = self._impl.ntotal * (self._impl.d * 4 + 2 * self.hnsw_m * 4) if self._impl is not None else 0
        elif self.backend == "faiss":
            backend = self._impl.ntotal * self._impl.d * 4 if self._impl is not None else 0
        else:
            backend = self._impl._fit_X.nbytes if self._impl is not None else 0
        return self.embeddings.numel() * 4 + self.labels.numel() * 8 + backend

    def _build(self, data: np.ndarray) -> Any:
        if self.backend.startswith("faiss"):
            import faiss  # lazily: see the module docstring

            index: faiss.Index
            if self.backend == "faiss-hnsw":
                index = faiss.IndexHNSWFlat(data.shape[1], self.hnsw_m)
                index.hnsw.efSearch = self.ef_search
            else:
                index = faiss.IndexFlatL2(data.shape[1])
            index.add(data)
            return index
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(algorithm=self.algorithm).fit(data)


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor (N, d), got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    x = x.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x
