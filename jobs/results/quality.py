"""Which masks to look at first, and whether tonight's images still look like the nights before.

`review` ranks a scope's images by a score of their quality signals (`unet_core.quality`); `drift`
compares one run's class shares and signal distributions with the committed runs before it.
Both read only the columns they need, in DuckDB, so they cost the same on a million images as on a
thousand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from jobs.common.errors import UserError
from unet_core.quality import SIGNALS

SCORE_SQL = """(uncertain_share + entropy_mean + (1 - confidence_mean) + coalesce(flip_disagreement, 0))
    / (3 + (flip_disagreement IS NOT NULL)::INTEGER)"""
"""The review score, 0 (trust it) to 1 (look at it): the mean of the share of uncertain pixels, the
mean normalized entropy, one less the mean confidence and, with flip TTA, the flip disagreement."""

REVIEW_SQL = f"""
SELECT image_uri, {SCORE_SQL} AS review_score, confidence_mean, confidence_p05, uncertain_share, entropy_mean,
       flip_disagreement, run_id, image_id
FROM scope_images
WHERE status = 'ok' AND confidence_mean IS NOT NULL {{having_class}}
ORDER BY review_score DESC, image_uri LIMIT $limit"""

HAVING_CLASS = "AND len(list_filter(classes, lambda c: c.class_name = $class AND c.pixels > 0)) > 0"

UNSIGNALLED_SQL = "SELECT count(*) FROM scope_images WHERE status = 'ok' AND confidence_mean IS NULL"


def review(con: duckdb.DuckDBPyConnection, class_name: str | None, limit: int) -> tuple[pa.Table, int]:
    """The scope's least trustworthy images first, and how many of its images carry no signals
    (written before they were recorded), which the ranking cannot hold."""
    sql = REVIEW_SQL.format(having_class=HAVING_CLASS if class_name else "")
    params = {"limit": limit, **({"class": class_name} if class_name else {})}
    return con.sql(sql, params=params).to_arrow_table(), con.execute(UNSIGNALLED_SQL).fetchall()[0][0]


PSI_FLOOR = 1e-4
"""A bin's share is at least this in the PSI, so an empty bin weighs much but not infinitely."""
NOISE_SES = 3.0
"""A class share moved only past this many standard errors of the difference: what the nights' sizes
leave to chance (a few hundred images move a share by several points on their own)."""

DRIFT_SCHEMA = pa.schema(
    [
        ("measure", pa.string()),
        ("name", pa.string()),
        ("baseline", pa.float64()),
        ("run", pa.float64()),
        ("shift", pa.float64()),
        ("noise", pa.float64()),
        ("limit", pa.float64()),
        ("moved", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class Drift:
    run_id: str
    rows: pa.Table
    """DRIFT_SCHEMA: per class its share of pixels and of images, per signal its PSI."""
    baseline_runs: list[str]
    unsignalled_runs: list[str]
    """Runs in the comparison written before the signals were recorded."""

    @property
    def moved(self) -> list[dict]:
        return [row for row in self.rows.to_pylist() if row["moved"]]


def drift(
    con: duckdb.DuckDBPyConnection, run_id: str | None, baseline_runs: int, max_shift: float, max_psi: float
) -> Drift:
    """Compare `run_id` (default: the latest run that segmented any image) with the `baseline_runs`
    committed runs before it that did, pooled. Nights with nothing new are no one's baseline."""
    run_id = run_id or latest_segmenting_run(con)
    if not con.execute("SELECT ok FROM runs WHERE run_id = $run", {"run": run_id}).fetchall()[0][0]:
        raise UserError(f"run {run_id}: segmented no image, so it has nothing to compare", "run")
    baseline = [
        row[0]
        for row in con.execute(
            "SELECT run_id FROM runs WHERE ok > 0 AND committed_at < (SELECT committed_at FROM runs WHERE run_id = $run) "
            "ORDER BY committed_at DESC LIMIT $k",
            {"run": run_id, "k": baseline_runs},
        ).fetchall()
    ]
    if not baseline:
        raise UserError(f"run {run_id}: no committed run before it segmented any image to compare with", "run")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE compared AS SELECT unnest($runs) AS run_id", {"runs": [run_id, *baseline]}
    )
    con.execute(COMPARED_SIGNALS_SQL)
    rows = _class_rows(con, run_id, max_shift) + _signal_rows(con, run_id, max_psi)
    unsignalled = [
        row[0]
        for row in con.execute(
            "SELECT run_id FROM compared_signals GROUP BY run_id HAVING count(confidence_mean) = 0 ORDER BY run_id"
        ).fetchall()
    ]
    return Drift(run_id, pa.Table.from_pylist(rows, schema=DRIFT_SCHEMA), baseline, unsignalled)


def latest_segmenting_run(con: duckdb.DuckDBPyConnection) -> str:
    found = con.execute("SELECT run_id FROM runs WHERE ok > 0 ORDER BY committed_at DESC LIMIT 1").fetchall()
    if not found:
        raise UserError("no committed run segmented any image yet: nothing to compare", "run")
    return found[0][0]


CLASS_SHARES_SQL = """
WITH per_image AS (
    SELECT run_id = $run AS tonight, class_name, pixels, sum(pixels) OVER (PARTITION BY run_id, image_id) AS total
    FROM class_stats SEMI JOIN compared USING (run_id)),
shares AS (
    SELECT tonight, class_name, sum(pixels) / sum(total) AS pixel_share, count(*) AS images,
           count(*) FILTER (WHERE pixels > 0) / count(*) AS image_share, avg(total) AS mean_total
    FROM per_image GROUP BY ALL)
SELECT class_name, tonight, pixel_share, image_share, image_share * (1 - image_share) / images AS image_variance,
       sum((pixels - pixel_share * total) ^ 2) / (images * greatest(images - 1, 1) * mean_total ^ 2) AS pixel_variance
FROM per_image JOIN shares USING (tonight, class_name)
GROUP BY class_name, tonight, pixel_share, image_share, images, mean_total ORDER BY class_name"""
"""Per class and side (the run, or the baseline pooled): its share of the pixels with the variance of
that ratio over images (the ratio estimator's), and its share of the images with a binomial variance."""


def _class_rows(con: duckdb.DuckDBPyConnection, run_id: str, max_shift: float) -> list[dict]:
    sides: dict[tuple[str, str], dict[bool, tuple[float, float]]] = {}
    for name, tonight, pixel_share, image_share, image_variance, pixel_variance in con.execute(
        CLASS_SHARES_SQL, {"run": run_id}
    ).fetchall():
        sides.setdefault(("pixel share", name), {})[tonight] = (pixel_share, pixel_variance)
        sides.setdefault(("image share", name), {})[tonight] = (image_share, image_variance)
    rows = []
    for (measure, name), side in sorted(sides.items(), key=lambda item: (item[0][1], item[0][0])):
        (before, before_variance), (now, now_variance) = side.get(False, (0.0, 0.0)), side.get(True, (0.0, 0.0))
        noise = NOISE_SES * math.sqrt(before_variance + now_variance)
        shift = now - before
        rows.append(
            {
                "measure": measure,
                "name": name,
                "baseline": before,
                "run": now,
                "shift": shift,
                "noise": noise,
                "limit": max_shift,
                "moved": abs(shift) > max(max_shift, noise),
            }
        )
    return rows


COMPARED_SIGNALS_SQL = f"""
CREATE OR REPLACE TEMP TABLE compared_signals AS
SELECT run_id, {", ".join(SIGNALS)} FROM images SEMI JOIN compared USING (run_id) WHERE status = 'ok'"""
"""The compared runs' signals, read from the store once for every measure that needs them."""

BASELINE_DECILES_SQL = """
SELECT quantile_cont({signal}, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]) FROM compared_signals
WHERE run_id != $run AND {signal} IS NOT NULL"""
"""The PSI's bin edges: the baseline's deciles, so each bin holds a tenth of the nights before (signals
crowd near 0 or 1, where equal-width bins would put nearly every image in one); equal deciles merge."""

SIGNAL_BINS_SQL = """
SELECT run_id = $run AS tonight, len(list_filter($edges, lambda edge: edge < {signal})) AS bin, count(*) AS images,
       sum({signal}) AS total
FROM compared_signals WHERE {signal} IS NOT NULL GROUP BY ALL"""
"""Per side, how many images fall in each bin between the edges (a value on an edge goes below it)."""


def _signal_rows(con: duckdb.DuckDBPyConnection, run_id: str, max_psi: float) -> list[dict]:
    rows = []
    for signal in SIGNALS:
        deciles = con.execute(BASELINE_DECILES_SQL.format(signal=signal), {"run": run_id}).fetchall()[0][0]
        if deciles is None:
            continue  # not recorded before (older runs, or flip disagreement without --tta flip)
        edges = sorted(set(deciles))
        counts = {True: [0] * (len(edges) + 1), False: [0] * (len(edges) + 1)}
        totals = {True: 0.0, False: 0.0}
        for tonight, bin_, images, total in con.execute(
            SIGNAL_BINS_SQL.format(signal=signal), {"run": run_id, "edges": edges}
        ).fetchall():
            counts[tonight][bin_] += images
            totals[tonight] += total
        if not sum(counts[True]):
            continue  # not recorded tonight
        before, now = (totals[side] / sum(counts[side]) for side in (False, True))
        psi = population_stability(counts[False], counts[True])
        rows.append(
            {
                "measure": "signal PSI",
                "name": signal,
                "baseline": before,
                "run": now,
                "shift": psi,
                "noise": None,
                "limit": max_psi,
                "moved": psi > max_psi,
            }
        )
    return rows


def population_stability(expected: list[int], actual: list[int]) -> float:
    """The population stability index of two histograms over the same bins: the sum over bins of
    (a - e) ln(a / e) of their shares. Below 0.1 is usually read as no shift, above 0.25 as a major one."""
    total_e, total_a = sum(expected), sum(actual)
    psi = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e / total_e, PSI_FLOOR), max(a / total_a, PSI_FLOOR)
        psi += (a - e) * math.log(a / e)
    return psi
