"""k-nearest-neighbour search in a latent space behind a two-call surface (add / search).

Backends (chosen by ``benchmarks/detect.py``):

* ``"torch"`` (default): exact search pruned by the triangle inequality over k-means cells
  (`PrunedExactSearch`); the same neighbours as scikit-learn's brute force, in the same order, at a
  fraction of its cost on the clustered latents DLD indexes (``tests/test_knn_exact.py``);
* ``"sklearn"``: scikit-learn ``NearestNeighbors`` (``algorithm`` "brute" (default: fastest measured, 10-d and 100-d) | "kd_tree" | "ball_tree" | "auto");
* ``"faiss"``: FAISS ``IndexFlatL2``. FAISS ships its own OpenMP runtime, so it is imported only when
  this backend is chosen, keeping the default process to the one runtime torch brings.
* ``"faiss-hnsw"``: FAISS ``IndexHNSWFlat`` (M = ``hnsw_m``, efSearch = ``ef_search``): approximate,
  for when exact search is the bottleneck of guarded inference. Its recall against exact search is
  tested; what it buys is measured by ``benchmarks/detect.py``.

Distances are Euclidean (FAISS's squared distances are square-rooted) so backends agree. Exact backends rank
equal distances lower index first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BACKENDS = ("torch", "sklearn", "faiss", "faiss-hnsw")


class KNNIndex:
    """Labelled embeddings with L2 k-NN search (exact, or approximate with "faiss-hnsw")."""

    def __init__(self, backend: str = "torch", algorithm: str = "brute", hnsw_m: int = 32,
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
        if self.backend == "torch":
            return self._impl.search(queries, k)
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
        elif self.backend == "torch":
            backend = self._impl.nbytes()
        elif self.backend == "faiss":
            backend = self._impl.ntotal * self._impl.d * 4 if self._impl is not None else 0
        else:
            backend = self._impl._fit_X.nbytes if self._impl is not None else 0
        return self.embeddings.numel() * 4 + self.labels.numel() * 8 + backend

    def _build(self, data: np.ndarray) -> Any:
        if self.backend == "torch":
            return PrunedExactSearch(torch.from_numpy(data))
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


class PrunedExactSearch:
    """Exact L2 k-NN that skips the k-means cells the triangle inequality rules out (why: brute force over all
    points dominates guarded inference, and a query's neighbours sit in a few cells of a clustered latent space).

    A query's k-th distance is bounded above by its k-th nearest point in its nearest cell (or in a fixed
    sample); a cell whose centre is farther than that bound plus the cell's radius cannot hold a neighbour. Cells are filtered in float32 with a
    slack larger than its rounding error, and the survivors ranked by exact float64 distances, equal distances
    lower index first: the answer of an exhaustive float64 search.
    """

    def __init__(self, data: torch.Tensor, cells: int = 64, sample: int = 256, iterations: int = 8,
                 seed: int = 0) -> None:
        self.x = data.to(torch.float64).contiguous()
        norms = self.x.square().sum(1)
        gen = torch.Generator().manual_seed(seed)
        centres = _kmeans(self.x, norms, min(cells, max(1, len(self.x) // 64)), iterations, gen)
        assign = _sq_dist(self.x, norms, centres, centres.square().sum(1)).argmin(1)
        sizes = torch.bincount(assign, minlength=len(centres))
        self.order = torch.sort(assign, stable=True).indices                    # point ids cell by cell, ascending
        self.sizes = sizes[sizes > 0]
        self.starts = self.sizes.cumsum(0) - self.sizes
        members = self.order.split(self.sizes.tolist())
        self.centres = centres[sizes > 0]
        self.radius = torch.stack([(self.x[m] - c).norm(dim=1).max() for m, c in zip(members, self.centres)])
        x32, n32 = self.x.float(), norms.float()
        ones = torch.ones(len(x32), 1)      # [-2x, 1, |x|^2]: one product with [q, |q|^2 - cut, 1] per cell
        self.cells = [torch.cat([-2 * x32, ones, n32[:, None]], 1)[m].T.contiguous() for m in members]
        pick = torch.randperm(len(self.x), generator=gen)[:sample]
        self.sample = (x32[pick], n32[pick])
        self.max_norm = float(norms.max())

    def nbytes(self) -> int:
        """Memory held: float64 points, float32 copies grouped by cell, the sample and the cell ids."""
        return len(self.x) * (self.x.shape[1] * 12 + 16) + self.sample[0].numel() * 4

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances (Q, k) float32 ascending, indices (Q, k) int64), exact."""
        q = queries.to(torch.float64)
        qn = q.square().sum(1)
        slack = 1e-5 * (qn + self.max_norm)          # well above float32's error in |q|^2 - 2 q.x + |x|^2
        query = torch.cat([q.float(), qn.float()[:, None], torch.ones(len(q), 1)], 1)   # . cell column = |q-x|^2
        centre = _sq_dist(q, qn, self.centres, self.centres.square().sum(1)).clamp_min(0).sqrt()
        bound = self._bound(query, centre.argmin(1), k) + slack                  # >= each query's k-th distance^2
        need = centre - self.radius <= (bound.sqrt() * (1 + 1e-7) + 1e-7)[:, None]        # (Q, cells)
        query[:, -2] -= (bound + slack).float()                                   # . cell column = |q-x|^2 - cut
        rows, idx = self._candidates(query, need)
        return _exact_top(q, self.x, rows, idx, k)

    def _bound(self, query: torch.Tensor, home: torch.Tensor, k: int) -> torch.Tensor:
        """Per query, the k-th smallest float32 squared distance to the points of its nearest cell, or of the
        fixed sample where that is smaller or the cell holds fewer than k (an upper bound on its k-th neighbour)."""
        sample = query[:, :-2] @ self.sample[0].T * -2 + self.sample[1] + query[:, -2:-1]
        bound = (sample.topk(k, 1, largest=False).values[:, -1] if k <= sample.shape[1]
                 else torch.full((len(query),), float("inf")))
        for c in home.unique().tolist():
            if self.sizes[c] >= k:
                rows = (home == c).nonzero().flatten()
                near = (query.index_select(0, rows) @ self.cells[c]).topk(k, 1, largest=False).values[:, -1]
                bound[rows] = torch.minimum(bound[rows], near)
        return bound.double()

    def _candidates(self, query: torch.Tensor, need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query row, point index) of every point in a needed cell with query . cell column <= 0."""
        cells, rows = need.T.nonzero(as_tuple=True)                              # (cell, query) pairs by cell
        per_cell = torch.bincount(cells, minlength=len(self.cells)).tolist()
        masks = [(query.index_select(0, r) @ self.cells[c] <= 0).flatten()
                 for c, r in enumerate(rows.split(per_cell)) if len(r)]
        hits = torch.cat(masks).nonzero().flatten()                              # one pass over all cells' masks
        used = torch.tensor([c for c, n in enumerate(per_cell) if n])
        pairs, width = torch.tensor(per_cell)[used], self.sizes[used]
        ends = (pairs * width).cumsum(0)                                         # where each cell's mask ends
        cell = torch.searchsorted(ends, hits, right=True)
        within = hits - (ends - pairs * width)[cell]
        first_row = (pairs.cumsum(0) - pairs)[cell]
        return rows[first_row + within // width[cell]], self.order[self.starts[used][cell] + within % width[cell]]


def _sq_dist(q: torch.Tensor, qn: torch.Tensor, x: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
    """Squared distances (Q, N) as |q|^2 - 2 q.x + |x|^2 (one matrix product)."""
    return torch.addmm(xn, q, x.T, alpha=-2).add_(qn[:, None])


def _kmeans(x: torch.Tensor, norms: torch.Tensor, cells: int, iterations: int, gen: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means centres (cells, d) from a seeded random start (their quality sets speed, not results)."""
    centres = x[torch.randperm(len(x), generator=gen)[:cells]].clone()
    for _ in range(iterations):
        assign = _sq_dist(x, norms, centres, centres.square().sum(1)).argmin(1)
        counts = torch.bincount(assign, minlength=cells)[:, None]
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


def _exact_top(q: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row, its k candidates nearest by exact float64 distance, equal distances lower index first."""
    order = torch.sort(rows, stable=True).indices
    rows, idx = rows[order], idx[order]
    counts = torch.bincount(rows, minlength=len(q))
    col = torch.arange(len(rows)) - (counts.cumsum(0) - counts)[rows]
    dist = torch.full((len(q), int(counts.max())), float("inf"), dtype=torch.float64)
    ids = torch.full_like(dist, -1, dtype=torch.int64)
    dist[rows, col] = (q.index_select(0, rows) - x.index_select(0, idx)).square_() @ torch.ones(x.shape[1], dtype=x.dtype)
    ids[rows, col] = idx
    top = dist.topk(min(k + 1, dist.shape[1]), 1, largest=False)
    near, near_ids = top.values[:, :k], ids.gather(1, top.indices[:, :k])
    ties = (top.values[:, k] == top.values[:, k - 1]) if top.values.shape[1] > k else torch.zeros(len(q), dtype=torch.bool)
    order = near_ids.sort(dim=1, stable=True).indices                        # lexicographic (distance, index)
    order = order.gather(1, near.gather(1, order).sort(dim=1, stable=True).indices)
    near, near_ids = near.gather(1, order), near_ids.gather(1, order)
    for r in ties.nonzero().flatten().tolist():                              # a tie at the k-th place: rank all
        order = ids[r].sort(stable=True).indices
        order = order[dist[r, order].sort(stable=True).indices][:k]
        near[r], near_ids[r] = dist[r, order], ids[r, order]
    return near.sqrt().float(), near_ids
