# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Exploring a hierarchical k-means run
#
# Answers: how balanced the clusters are at each level, what a cluster looks like, and how the
# sample spreads over the top-level clusters. `vdc-lake cluster` wrote `clusters` (centres,
# parents, sizes per level) and `assignments` (every image at every level). Works on dry-run and
# applied catalogs (images `apply` removed are drawn from their backups). Open it as a notebook
# (`pip install -e ".[notebooks]"`, then `jupytext --to notebook explore_clusters.py && jupyter lab
# explore_clusters.ipynb`), or run it as a script: each figure is saved under VDC_LAKE_FIGURES
# (default figures/explore_clusters/) and its path printed.

# %%
import os

import duckdb
import matplotlib.pyplot as plt

from vdc_lake.review.notebook import image_grid, original_or_backup_sql, show_figure

CATALOG = os.environ.get("VDC_LAKE_CATALOG", "data/quickstart/catalog.duckdb")
FIGURES = os.path.join(os.environ.get("VDC_LAKE_FIGURES", "figures"), "explore_clusters")
con = duckdb.connect(CATALOG, read_only=True)
run = con.execute("SELECT max(run_id) FROM runs WHERE stage = 'cluster' AND status = 'done'").fetchall()[0][0]
print("cluster run", run)

# %% [markdown]
# ## Cluster sizes per level

# %%
levels = con.execute("""
    SELECT level, list(size ORDER BY size DESC) AS sizes
    FROM clusters WHERE run_id = $run GROUP BY level ORDER BY level
""", {"run": run}).fetchall()
fig, axes = plt.subplots(1, max(1, len(levels)), figsize=(4 * max(1, len(levels)), 3), squeeze=False)
for ax, (level, sizes) in zip(axes.flat, levels):
    print(f"level {level}: {len(sizes)} clusters, sizes {min(sizes)}..{max(sizes)}")
    ax.bar(range(len(sizes)), sizes)
    ax.set_title(f"level {level}: {len(sizes)} clusters")
    ax.set_xlabel("cluster (largest first)")
    ax.set_ylabel("images")
show_figure(fig, FIGURES, "cluster_sizes")

# %% [markdown]
# ## The most and least compact level-0 clusters (mean distance to the centre)

# %%
for cluster_id, images, mean_distance in con.execute("""
    SELECT cluster_id, count(*) AS images, round(avg(distance), 4) AS mean_distance
    FROM assignments WHERE run_id = $run AND level = 0
    GROUP BY cluster_id ORDER BY mean_distance DESC LIMIT 10
""", {"run": run}).fetchall():
    print(f"cluster {cluster_id:>5}: {images:>5} images, mean distance {mean_distance}")

# %% [markdown]
# ## Members of the largest level-0 cluster, closest to the centre first

# %%
members = con.execute(f"""
    SELECT x.distance, {original_or_backup_sql()} AS path
    FROM assignments AS x
    WHERE x.run_id = $run AND x.level = 0
      AND x.cluster_id = (SELECT cluster_id FROM clusters WHERE run_id = $run AND level = 0 ORDER BY size DESC LIMIT 1)
    ORDER BY x.distance LIMIT 12
""", {"run": run}).fetchall()
grid = image_grid([p for _, p in members], [f"{os.path.basename(p or '(missing)')}\n{max(0.0, d):.3f}" for d, p in members])
show_figure(grid, FIGURES, "largest_cluster_members")

# %% [markdown]
# ## Sampling allocation per top-level cluster

# %%
allocation = con.execute("""
    WITH top AS (SELECT max(level) AS level FROM clusters WHERE run_id = $run),
         latest AS (SELECT max(run_id) AS run_id FROM runs WHERE stage = 'sample' AND status = 'done')
    SELECT a.cluster_id, count(*) AS available, count(s.image_id) AS sampled
    FROM assignments AS a JOIN top USING (level)
    LEFT JOIN samples AS s ON s.image_id = a.image_id AND s.run_id = (SELECT run_id FROM latest)
    WHERE a.run_id = $run
    GROUP BY a.cluster_id ORDER BY available DESC
""", {"run": run}).fetchall()
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar([str(c) for c, _, _ in allocation], [a for _, a, _ in allocation], label="available")
ax.bar([str(c) for c, _, _ in allocation], [s for _, _, s in allocation], label="sampled")
ax.set_xlabel("top-level cluster")
ax.set_ylabel("images")
ax.legend()
show_figure(fig, FIGURES, "sample_allocation")
