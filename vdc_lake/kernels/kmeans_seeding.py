"""k-means seeding: greedy k-means++ in a few rounds of batched matmuls, or random rows.

k-means++ (greedy, 2 + log k trials per centre) runs in ``INIT_ROUNDS`` rounds on a random
sample of ``INIT_SAMPLE_PER_CLUSTER * k`` points, instead of k sequential passes over the data.
"""

from __future__ import annotations

import math

import torch

from vdc_lake.kernels.kmeans_pass import Scorer
from vdc_lake.kernels.kmeans_results import Progress
from vdc_lake.kernels.kmeans_rows import Rows, chunks, report_progress, score_budget

# k-means++ sees at most this many points per cluster; more only slows the seeding.
INIT_SAMPLE_PER_CLUSTER = 10
# k-means++ seeding draws its k centres in this many rounds of two matmuls each.
INIT_ROUNDS = 32


def _min_distances(sample: torch.Tensor, others: torch.Tensor, metric: str) -> torch.Tensor:
    """[m] distance from each sample row to the nearest of ``others`` [t, d], in chunks."""
    scorer = Scorer.of(others, metric)
    out = torch.empty(len(sample), dtype=torch.float32, device=sample.device)
    for start, stop in chunks(len(sample), max(1, score_budget(sample.device) // len(others))):
        block = sample[start:stop]
        out[start:stop] = scorer.distances(scorer.scores(block).max(dim=1).values, block)
    return out


def _gains(sample: torch.Tensor, potential: torch.Tensor, candidates: torch.Tensor,
           metric: str) -> torch.Tensor:
    """[t] float64 drop of the k-means potential sum(potential) if each of the candidate
    rows [t, d] were added alone as a centre."""
    scorer = Scorer.of(candidates, metric)
    gains = torch.zeros(len(candidates), dtype=torch.float64, device=sample.device)
    for start, stop in chunks(len(sample), max(1, score_budget(sample.device) // len(candidates))):
        block = sample[start:stop]
        closer = potential[start:stop].unsqueeze(1) - scorer.distances(scorer.scores(block), block)
        gains += closer.clamp_(min=0.0).sum(dim=0, dtype=torch.float64)
    return gains


def _seed_by_d2_rounds(sample: torch.Tensor, k: int, metric: str, generator: torch.Generator,
                       progress: Progress | None) -> torch.Tensor:
    """Greedy k-means++ seeding done in ``INIT_ROUNDS`` rounds (as k-means||, Bahmani et
    al. 2012, with the 2 + log k trials of greedy k-means++).

    sample: [m, d] rows on the compute device. Each round fills about k / INIT_ROUNDS
    slots: slot j draws its trials from the j-th equal slice of the cumulative distance to
    the nearest centre so far (D^2 sampling, stratified; inverse CDF on a float64 cumulative
    sum, so no ``torch.multinomial`` and its 2^24-row limit) and keeps the trial that lowers
    the potential most; one matmul scores all trials. Returns [k, d].
    """
    m = len(sample)
    trials = 2 + int(math.log(k))
    first = int(torch.randint(m, (1,), generator=generator))
    chosen = [torch.tensor([first])]
    potential = _min_distances(sample, sample[first : first + 1], metric)
    have, per_round = 1, max(1, math.ceil((k - 1) / INIT_ROUNDS))
    while have < k:
        cumulative = potential.to(torch.float64).cumsum(dim=0)
        want = min(per_round, k - have)
        uniforms = torch.rand((want, trials), generator=generator, dtype=torch.float64)
        if cumulative[-1].item() <= 0:  # every row sits on a centre: duplicates stand in
            chosen.append(torch.randperm(m, generator=generator)[: k - have])
            break
        targets = ((torch.arange(want, dtype=torch.float64).unsqueeze(1) + uniforms) / want).to(sample.device)
        # right=True never lands on a zero-potential row (an existing centre)
        candidates = torch.searchsorted(cumulative, targets.flatten() * cumulative[-1], right=True)
        candidates = candidates.clamp_(max=m - 1).view(want, trials)
        best = _gains(sample, potential, sample[candidates.flatten()], metric).view(want, trials).argmax(dim=1)
        picked = candidates.gather(1, best.unsqueeze(1)).squeeze(1).unique()
        potential = torch.minimum(potential, _min_distances(sample, sample[picked], metric))
        chosen.append(picked.cpu())
        have += len(picked)
        report_progress(progress, "init", min(have, k), k)
    return sample[torch.cat(chosen)[:k].to(sample.device)]


def initial_centers(rows: Rows, k: int, init: str, generator: torch.Generator,
                    progress: Progress | None) -> torch.Tensor:
    """[k, d] starting centres: k distinct rows ("random"), or greedy k-means++ on a sample."""
    if init == "random":
        return rows.take(torch.randperm(rows.n, generator=generator)[:k].sort().values)
    size = min(rows.n, max(k, INIT_SAMPLE_PER_CLUSTER * k))
    picked = torch.randperm(rows.n, generator=generator)[:size].sort().values
    return _seed_by_d2_rounds(rows.take(picked), k, rows.metric, generator, progress)
