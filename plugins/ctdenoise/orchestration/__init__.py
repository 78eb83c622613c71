"""Orchestration of ctdenoise by Airflow: everything the ``ct_denoise`` DAG needs besides the DAG file.

Modules, from the lightest to the heaviest import:

- :mod:`~ctdenoise.orchestration.config`: settings read from ``CT_DENOISE_*`` environment
  variables at DAG parse time (runtime, bucket layout, schedule, images, pools, timeouts).
- :mod:`~ctdenoise.orchestration.params`: the trigger-form params and their JSON schema.
- :mod:`~ctdenoise.orchestration.batch`: what a run works on: series folders of a partition,
  the upload-settled rule, the already-published check, the (series, rank) plan, the report.
- :mod:`~ctdenoise.orchestration.podrun`: the pod entry point (stdlib only; runs in the
  worker image, which has no Airflow).
- :mod:`~ctdenoise.orchestration.aws`: S3 options and environment from the Airflow AWS connection.
- :mod:`~ctdenoise.orchestration.sensors`: ``wait_for_settled_upload``.
- :mod:`~ctdenoise.orchestration.local` and :mod:`~ctdenoise.orchestration.pods`: the task
  implementations of the ``local`` and ``kubernetes`` runtimes (they import Airflow providers).
- :mod:`~ctdenoise.orchestration.devenv`: a moto server + ``airflow dags test`` harness for the
  demo and the end-to-end test.

Nothing here imports numpy, pydicom, zarr or pyspark at module level: the DAG file imports
config, params and the runtime module at parse time.
"""
