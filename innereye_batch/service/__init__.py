"""`innereye-batch serve`: the models of `run` behind a REST service compatible with InnerEye's inference API.

- ``options.py``: what `serve` accepts (ServeOptions), model ids, upload limits.
- ``auth.py``: the shared secret (header ``API_AUTH_SECRET``), compared in constant time.
- ``responses.py``: InnerEye's error bodies (``{code, detail, status, title, extra_details}``).
- ``models.py``: each model folder loaded once at start-up, its predictor and formats.
- ``device.py``: one queue in front of the device; predictors whose ``predict`` runs there.
- ``batching.py``: dynamic batching of real-time predict requests (``--max-batch`` / ``--max-wait-ms``).
- ``predict.py``: one posted DICOM image -> the predictions.json document (and a heat map).
- ``uploads.py``: size-limited uploads; zips checked before extraction (escapes, links, bombs).
- ``store.py``: the SQLite job store under ``--state-dir``; ``jobs.py``: the worker that runs queued jobs
  through plan_run / process_item, recovery after a restart, expiry of results.
- ``packaging.py``: result zips (InnerEye's ``segmentation.dcm``, or every output).
- ``metrics.py``: Prometheus text; ``app.py``: the FastAPI app; ``server.py``: start-up and uvicorn.

FastAPI, uvicorn and prometheus-client come with the ``serve`` extra (``pip install 'innereye-batch[serve]'``).
"""
