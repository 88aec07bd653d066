"""Analysis of result tables: robustness distributions, certified-accuracy curves, statistics and figures."""
