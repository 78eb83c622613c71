"""ctdenoise: denoise low-dose CT series by truncated SVD (see README.md).

Heavy dependencies (numpy, pydicom, zarr, pyspark) are imported by the modules that need them,
never here: the Airflow DAG imports this package at parse time.
"""

__version__ = "0.1.0"
