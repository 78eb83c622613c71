"""Patient data in the work area: removed once the series is published, kept otherwise."""

from __future__ import annotations

from pathlib import Path

from test_plan import RUN, converted_for, results_for

from ctdenoise import storage
from ctdenoise.plan import plan_series
from ctdenoise.report import publish_report
from ctdenoise.retention import clean_series_work

CONF = {"modes": ["global"], "ranks": [2], "drop_percents": [], "auto_rank": False}


def test_work_data_goes_once_the_series_is_published(tmp_path: Path) -> None:
    converted = converted_for(tmp_path, CONF)
    series = converted.series
    work = Path(series.work_url)
    assert (work / "matrix").is_dir() and "header" in (work / "matrix" / f"{series.series_instance_uid}.zarr" / "zarr.json").read_text()

    kept = clean_series_work(series, True)  # no report yet: an incomplete series keeps its work data
    assert kept["removed"] is False and "not published" in kept["reason"] and work.is_dir()

    items = plan_series(converted)
    publish_report(series, items, results_for(items), RUN)
    assert clean_series_work(series, False)["removed"] is False and work.is_dir(), "retention 'keep'"
    done = clean_series_work(series, True)
    assert done["removed"] is True and not work.exists()
    assert all(storage.is_published(i.output_url) for i in items), "outputs stay"
    assert clean_series_work(series, True)["removed"] is False  # nothing left: fine (a task retry)


def test_a_report_that_no_longer_vouches_keeps_the_work_data(tmp_path: Path) -> None:
    converted = converted_for(tmp_path, CONF)
    series = converted.series
    items = plan_series(converted)
    publish_report(series, items, results_for(items), RUN)
    storage.remove_tree(items[0].output_url)  # an output gone since the report
    assert clean_series_work(series, True)["removed"] is False and Path(series.work_url).is_dir()
