"""Orchestration of ctdenoise by Airflow: everything the ``ct_denoise`` DAG needs besides the DAG file.

The work itself is the package's (:mod:`ctdenoise.convert`, :mod:`ctdenoise.job`,
:mod:`ctdenoise.plan`, :mod:`ctdenoise.writer`, :mod:`ctdenoise.report`); these modules only say
where and when it runs. From the lightest import to the heaviest:

- :mod:`~ctdenoise.orchestration.config`: settings read from ``CT_DENOISE_*`` environment
  variables at DAG parse time (runtime, bucket layout, schedule, images, pools, timeouts).
- :mod:`~ctdenoise.orchestration.trigger`: the trigger form, derived from :mod:`ctdenoise.params`.
- :mod:`~ctdenoise.orchestration.discovery`: what a run works on: the series folders of a
  partition, the upload-settled rule, the already-published check.
- :mod:`~ctdenoise.orchestration.podrun`: the pod entry point (runs in the worker image, which
  has no Airflow).
- :mod:`~ctdenoise.orchestration.aws`: S3 options and environment from the Airflow AWS connection.
- :mod:`~ctdenoise.orchestration.sensors`: ``wait_for_settled_upload``.
- :mod:`~ctdenoise.orchestration.sparkapp`: the SparkApplication of the kubernetes runtime.
- :mod:`~ctdenoise.orchestration.local` and :mod:`~ctdenoise.orchestration.pods`: the task
  implementations of the ``local`` and ``kubernetes`` runtimes (they import Airflow providers).

Nothing here imports numpy, pydicom, zarr or pyspark at module level: the DAG file imports
config, trigger and the runtime module at parse time.
"""
