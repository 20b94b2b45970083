"""``lbproxy simulate``: replay a trace through the real scaling policy, routing and billing on a virtual clock,
to choose settings before paying for GPUs (README "lbproxy simulate").

``engine`` (events and their order), ``endpoint`` (the simulated endpoint around lbproxy's own decisions),
``coldstart`` (cold-start times), ``traces`` (files, access logs, built-in traces), ``results`` (one setting's
outcome), ``grid`` (--set and --grid), ``advice`` (the Pareto front and the recommendation), ``report``
(table, CSV/JSON, plots, HTML) and ``command`` (the CLI).
"""
