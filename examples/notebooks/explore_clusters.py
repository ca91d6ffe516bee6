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
# `vdc-lake cluster` wrote `clusters` (centres, parents, sizes per level) and `assignments`
# (every image at every level). These queries show balance and what sampling will do.

# %%
import os

import duckdb

CATALOG = os.environ.get("VDC_LAKE_CATALOG", "data/quickstart/catalog.duckdb")
con = duckdb.connect(CATALOG, read_only=True)
run = con.sql("SELECT max(run_id) FROM runs WHERE stage = 'cluster' AND status = 'done'").fetchone()[0]
print("cluster run", run)

# %% [markdown]
# ## Cluster sizes per level

# %%
con.sql("""
    SELECT level, count(*) AS clusters, min(size) AS smallest, median(size) AS median, max(size) AS largest
    FROM clusters WHERE run_id = $run GROUP BY level ORDER BY level
""", params={"run": run}).show()

# %% [markdown]
# ## The most and least compact level-0 clusters (mean distance to the centre)

# %%
con.sql("""
    SELECT cluster_id, count(*) AS images, round(avg(distance), 4) AS mean_distance
    FROM assignments WHERE run_id = $run AND level = 0
    GROUP BY cluster_id ORDER BY mean_distance DESC LIMIT 10
""", params={"run": run}).show()

# %% [markdown]
# ## Members of one cluster, closest to the centre first

# %%
con.sql("""
    SELECT a.distance, f.path
    FROM assignments a JOIN image_files f USING (image_id)
    WHERE a.run_id = $run AND a.level = 0
      AND a.cluster_id = (SELECT cluster_id FROM clusters WHERE run_id = $run AND level = 0 ORDER BY size DESC LIMIT 1)
    ORDER BY a.distance LIMIT 20
""", params={"run": run}).show()

# %% [markdown]
# ## Sampling allocation per top-level cluster

# %%
con.sql("""
    WITH top AS (SELECT max(level) AS level FROM clusters WHERE run_id = $run),
         latest AS (SELECT max(run_id) AS run_id FROM samples)
    SELECT a.cluster_id, count(*) AS available, count(s.image_id) AS sampled
    FROM assignments a JOIN top USING (level)
    LEFT JOIN samples s ON s.image_id = a.image_id AND s.run_id = (SELECT run_id FROM latest)
    WHERE a.run_id = $run
    GROUP BY a.cluster_id ORDER BY available DESC
""", params={"run": run}).show()
