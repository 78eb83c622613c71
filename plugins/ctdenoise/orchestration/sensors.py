"""``wait_for_settled_upload``: wait until every series folder of a partition has stopped changing.

The rule (S3 ``LastModified`` of each folder's newest object older than ``settle_seconds``) is in
:mod:`ctdenoise.orchestration.batch`. The sensor keeps no state between pokes, so it runs in
``reschedule`` mode: between pokes it holds no worker slot, and a worker restart loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue


class SettledUploadSensor(BaseSensorOperator):
    """Succeeds when the partition has series folders and none changed for ``settle_seconds``.

    :param partition_url: ``s3://bucket/incoming/<ds>`` (templated).
    :param settle_seconds: quiet time required of every folder.
    :param aws_conn_id: Airflow AWS connection used to list the bucket.

    The XCom is the last listing: folders with their file counts and the unsettled ones.
    """

    template_fields: Sequence[str] = ("partition_url",)
    ui_color = "#e0f0ff"

    def __init__(self, *, partition_url: str, settle_seconds: float, aws_conn_id: str = "aws_default", **kwargs: Any):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.partition_url = partition_url
        self.settle_seconds = float(settle_seconds)
        self.aws_conn_id = aws_conn_id

    def poke(self, context: Any) -> PokeReturnValue:
        from ctdenoise.orchestration import aws, batch

        state = batch.settled_state(self.partition_url, self.settle_seconds, aws.storage_options(self.aws_conn_id))
        if state["unsettled"]:
            self.log.info("still changing (seconds since last change): %s", state["unsettled"])
        elif not state["folders"]:
            self.log.info("no series folder in %s yet", self.partition_url)
        else:
            self.log.info("%d series folder(s) settled in %s", len(state["folders"]), self.partition_url)
        return PokeReturnValue(is_done=state["settled"], xcom_value=state)
