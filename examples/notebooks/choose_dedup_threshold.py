# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Choosing a dedup threshold
#
# `vdc-lake dedup report --report-threshold 0.5` stored every pair under 0.5 once. Everything
# below is a query over the catalog: trying another threshold never searches neighbours again.
# Open with `jupytext --to notebook choose_dedup_threshold.py`, or run it as a script.

# %%
import os

import duckdb

CATALOG = os.environ.get("VDC_LAKE_CATALOG", "data/quickstart/catalog.duckdb")
con = duckdb.connect(CATALOG, read_only=True)

# %% [markdown]
# ## How far apart are reported pairs?

# %%
con.sql("""
    SELECT round(distance, 2) AS bucket, count(*) AS pairs
    FROM near_duplicate_edges
    GROUP BY ALL ORDER BY bucket
""").show()

# %% [markdown]
# ## How many images would each threshold remove?

# %%
con.sql("""
    SELECT t.threshold,
           (SELECT count(*) FROM dedup_actions(threshold := t.threshold) WHERE action = 'delete') AS removed,
           (SELECT count(DISTINCT group_id) FROM dedup_actions(threshold := t.threshold)) AS groups
    FROM (VALUES (0.02), (0.05), (0.1), (0.25), (0.4)) AS t(threshold)
""").show()

# %% [markdown]
# ## Look at groups just under a candidate threshold
# Pairs near the threshold are where mistakes happen: check their paths (or `vdc-lake report`).

# %%
candidate = 0.25
con.sql("""
    SELECT group_id, group_size, nearest_distance, action, path
    FROM dedup_actions(threshold := $t)
    WHERE group_id IN (SELECT group_id FROM dedup_actions(threshold := $t)
                       WHERE nearest_distance BETWEEN $t * 0.8 AND $t)
    ORDER BY group_id, rank_in_group
    LIMIT 40
""", params={"t": candidate}).show()
