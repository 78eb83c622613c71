"""``wait_for_settled_upload``: wait until every series folder of a partition has stopped changing.

A folder that keeps changing (an upload that never ends, a modality that rewrites its files)
must not hold back the settled series: after ``proceed_after_seconds`` the sensor goes on with
the settled folders, names the others in its log and XCom, and ``discover_series`` leaves them
out (a later run of the partition takes them). Only a partition with no settled folder fails.

The rule (S3 ``LastModified`` of each folder's newest object older than ``settle_seconds``) is in
:mod:`ctdenoise.orchestration.discovery`. The sensor keeps no state between pokes, so it runs in
``reschedule`` mode: between pokes it holds no worker slot, and a worker restart loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue


class SettledUploadSensor(BaseSensorOperator):
    """Succeeds when the partition has series folders and none changed for ``settle_seconds``.

    :param partition_url: ``s3://bucket/incoming/<ds>`` (templated).
    :param settle_seconds: quiet time required of every folder.
    :param aws_conn_id: Airflow AWS connection used to list the bucket.
    :param proceed_after_seconds: after this long since the first poke, succeed with the settled
        folders if some are still changing (None: wait for all until ``timeout``).

    The XCom is the last listing: folders with their file counts, the unsettled ones, and
    ``proceeded_without`` (the unsettled folders it went on without, or an empty dict).
    """

    template_fields: Sequence[str] = ("partition_url",)
    ui_color = "#e0f0ff"

    def __init__(
        self,
        *,
        partition_url: str,
        settle_seconds: float,
        aws_conn_id: str = "aws_default",
        proceed_after_seconds: float | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.partition_url = partition_url
        self.settle_seconds = float(settle_seconds)
        self.aws_conn_id = aws_conn_id
        self.proceed_after_seconds = None if proceed_after_seconds is None else float(proceed_after_seconds)
        self._first_poke: float | None = None

    def waited_seconds(self, context: Any) -> float:
        """Seconds since the first poke of this try: from the first reschedule in the metadata
        database in reschedule mode (each poke is a new process), from memory in poke mode."""
        ti = context.get("ti")
        if self.reschedule and ti is not None:
            first = ti.get_first_reschedule_date(context)
            return 0.0 if first is None else (datetime.now(timezone.utc) - first).total_seconds()
        if self._first_poke is None:
            self._first_poke = time.monotonic()
        return time.monotonic() - self._first_poke

    def poke(self, context: Any) -> PokeReturnValue:
        from ctdenoise.orchestration import aws, discovery

        state = discovery.settled_state(self.partition_url, self.settle_seconds, aws.storage_options(self.aws_conn_id))
        state["proceeded_without"] = {}
        done = state["settled"]
        unsettled = state["unsettled"]
        if unsettled:
            self.log.info("still changing (seconds since last change): %s", unsettled)
            settled = sorted(set(state["folders"]) - set(unsettled))
            waited = self.waited_seconds(context)
            if settled and self.proceed_after_seconds is not None and waited >= self.proceed_after_seconds:
                self.log.warning(
                    "after %.0f s, going on with the %d settled folder(s) %s; left out, still changing: %s "
                    "(a later run of this partition takes them)", waited, len(settled), settled, sorted(unsettled),
                )
                state["proceeded_without"] = dict(unsettled)
                done = True
        elif not state["folders"]:
            self.log.info("no series folder in %s yet", self.partition_url)
        else:
            self.log.info("%d series folder(s) settled in %s", len(state["folders"]), self.partition_url)
        return PokeReturnValue(is_done=done, xcom_value=state)
