"""Held-out evaluation of the base, SFT and DPO models, and the report that shows it (the eval_report stage).

`data` reads the upstream outputs tolerantly, `models` loads the three models, `perplexity`, `preference`,
`generation` and `contamination` compute the numbers, `plots` draws them and `report` renders report.md/html.
"""
