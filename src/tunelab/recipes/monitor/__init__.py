"""Watching a served model: the traffic log's database (`store`), drift and quality signals of live traffic
against the run's training data (`signals`, `drift`), and the monitor's report and alerts (`monitor`, `report`)."""
