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
# Answers: how far apart are the pairs `dedup report` found, how many images each apply
# threshold would remove, and what the pairs just under a threshold look like.
# `dedup report` stored every pair under its report threshold once; everything below is a query
# over the catalog, so trying another threshold never searches neighbours again. It works on a
# dry-run catalog and on one where `apply dedup` already ran (removed images are shown from
# their backups). Open it as a notebook (`pip install -e ".[notebooks]"`, then `jupytext --to
# notebook choose_dedup_threshold.py && jupyter lab choose_dedup_threshold.ipynb`), or run it as
# a script (`VDC_LAKE_CATALOG=... python choose_dedup_threshold.py`): each figure is saved under
# VDC_LAKE_FIGURES (default figures/choose_dedup_threshold/) and its path printed.

# %%
import os

import duckdb
import matplotlib.pyplot as plt
import numpy as np

from vdc_lake.review.notebook import apply_threshold, image_grid, original_or_backup_sql, show_figure

CATALOG = os.environ.get("VDC_LAKE_CATALOG", "data/quickstart/catalog.duckdb")
FIGURES = os.path.join(os.environ.get("VDC_LAKE_FIGURES", "figures"), "choose_dedup_threshold")
con = duckdb.connect(CATALOG, read_only=True)

# The newest finished report run per embedding set, and the threshold it searched to.
reports = con.sql("""
    SELECT run_id, json_extract_string(params, '$.set') AS set_name,
           json_extract(params, '$.threshold')::DOUBLE AS report_threshold
    FROM runs WHERE stage = 'dedup-report' AND status = 'done'
    QUALIFY row_number() OVER (PARTITION BY set_name ORDER BY run_id DESC) = 1
""").fetchall()
print(reports)
APPLY = apply_threshold(con)
print("apply threshold in the catalog's settings:", APPLY)

# %% [markdown]
# ## How far apart are reported pairs?
# Every stored pair of the newest report runs (including pairs whose image `apply` already
# removed), on a log scale so a crowded bin does not hide the rest.

# %%
distances = np.array([d for (d,) in con.execute("""
    SELECT e.distance FROM dup_edges AS e
    JOIN (SELECT json_extract_string(params, '$.set') AS set_name, max(run_id) AS run_id
          FROM runs WHERE stage = 'dedup-report' AND status = 'done' GROUP BY ALL) AS r
      ON r.run_id = e.run_id AND r.set_name = e.set_name
""").fetchall()], dtype=np.float64)
print(f"{len(distances)} pairs")
fig, ax = plt.subplots(figsize=(7, 3))
if len(distances):
    ax.hist(distances, bins=50)
    ax.set_yscale("log")
ax.axvline(APPLY, color="red", label=f"apply threshold {APPLY:g}")
for _, set_name, report_threshold in reports:
    ax.axvline(report_threshold, color="grey", linestyle="--", label=f"report threshold {report_threshold:g} ({set_name})")
ax.set_xlabel("distance")
ax.set_ylabel("pairs (log)")
ax.legend(fontsize=8)
show_figure(fig, FIGURES, "pair_distances")

# %% [markdown]
# ## How many images would each threshold remove?
# Pending deletions come from `dedup_actions(threshold := t)`; deletions `apply dedup` already
# carried out come from the journal (they no longer show up as pending).

# %%
already_removed = con.execute("""
    SELECT count(DISTINCT j.image_id) FROM journal AS j JOIN runs AS r ON r.run_id = j.run_id
    WHERE r.stage = 'apply:dedup' AND j.action = 'delete' AND j.state = 'done'
""").fetchall()[0][0]
candidates = sorted({0.02, 0.05, 0.1, 0.15, 0.25, 0.4, APPLY})
per_threshold = con.execute("""
    SELECT t.threshold,
           (SELECT count(*) FROM dedup_actions(threshold := t.threshold) WHERE action = 'delete') AS pending,
           (SELECT count(DISTINCT group_id) FROM dedup_actions(threshold := t.threshold)) AS groups
    FROM unnest($1::DOUBLE[]) AS t(threshold) ORDER BY t.threshold
""", [candidates]).fetchall()
for threshold, pending, groups in per_threshold:
    print(f"threshold {threshold:<5g} pending deletions {pending:>5}  groups {groups:>5}")
print("already removed by apply dedup:", already_removed)
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot([t for t, _, _ in per_threshold], [p + already_removed for _, p, _ in per_threshold], marker="o")
ax.axvline(APPLY, color="red", label=f"apply threshold {APPLY:g}")
ax.set_xlabel("apply threshold")
ax.set_ylabel("images removed (pending + applied)")
ax.legend(fontsize=8)
show_figure(fig, FIGURES, "removed_per_threshold")

# %% [markdown]
# ## Pairs just under a candidate threshold
# Mistakes happen near the threshold: each row shows a pair (left image, right image) with the
# closest-to-the-threshold pairs first. Removed images are drawn from their backups.

# %%
candidate = APPLY
pairs = con.execute(f"""
    WITH newest AS (
        SELECT json_extract_string(params, '$.set') AS set_name, max(run_id) AS run_id
        FROM runs WHERE stage = 'dedup-report' AND status = 'done' GROUP BY ALL
    ), near AS (
        SELECT e.image_a, e.image_b, e.distance FROM dup_edges AS e
        JOIN newest AS n ON n.run_id = e.run_id AND n.set_name = e.set_name
        WHERE e.distance < $1 ORDER BY e.distance DESC LIMIT 6
    )
    SELECT n.distance,
           (SELECT {original_or_backup_sql()} FROM (SELECT n.image_a AS image_id) AS x) AS path_a,
           (SELECT {original_or_backup_sql()} FROM (SELECT n.image_b AS image_id) AS x) AS path_b
    FROM near AS n ORDER BY n.distance DESC
""", [candidate]).fetchall()
if pairs:
    paths = [p for _, a, b in pairs for p in (a, b)]
    titles = [f"{os.path.basename(p or '(missing)')}\n{max(0.0, d):.3f}" for d, a, b in pairs for p in (a, b)]
    show_figure(image_grid(paths, titles, columns=4), FIGURES, "pairs_near_threshold")
else:
    print(f"no pair under {candidate:g}")
