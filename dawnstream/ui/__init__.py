"""``dawnstream ui``: a read-only web dashboard over the running jobs, the broker and the model registry.

Modules: :mod:`~dawnstream.ui.scrape` (Prometheus text -> numbers, histogram quantiles),
:mod:`~dawnstream.ui.jobs` (one job's view from its workers' scrapes), :mod:`~dawnstream.ui.broker_view`
(topics, consumer-group lag, dead letters), :mod:`~dawnstream.ui.registry_view`,
:mod:`~dawnstream.ui.collector` (the polling loop and its history) and :mod:`~dawnstream.ui.app`
(Starlette routes, served by uvicorn). The page is static HTML + JavaScript with uPlot charts; it
polls ``/api/state``. Nothing on it changes a job.
"""
