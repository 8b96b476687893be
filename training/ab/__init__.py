"""A/B evaluation across partner regions: exposures, outcome attribution, statistics, power and the report.

Pipeline: `exposures.read_exposures` / `exposures.read_events` (Parquet exported from the Redis streams)
-> `attribution.attribute` (outcomes per exposure and per student) -> `stats.analyse` (per region, pooled,
Holm-corrected, sample-ratio check) -> `report.write_report` (HTML + JSON). `power.plan` sizes experiments
before they start. Heavy libraries (pandas, statsmodels, matplotlib) are imported by those modules, not here.
"""

from __future__ import annotations
