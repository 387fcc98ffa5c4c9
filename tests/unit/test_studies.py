"""The instance -> backend map of storage commitment without `state_dir`: in memory, bounded,
least recently used out first."""

from __future__ import annotations

from dicomlb.studies import StudyIndex


def test_instances_are_kept_in_memory_without_state_dir() -> None:
    index = StudyIndex()  # no state_dir
    index.record("", "orthanc2", "1.2.9.1")  # a store whose study was not read
    index.record("1.2.1", "orthanc1", "1.2.1.1")
    assert index.holders(["1.2.9.1", "1.2.1.1", "1.2.0"]) == {
        "1.2.9.1": "orthanc2",
        "1.2.1.1": "orthanc1",
    }
    assert index.locate("1.2.1") == ["orthanc1"]
    index.close()


def test_the_least_recently_used_instance_goes_first() -> None:
    index = StudyIndex(limit=3)
    for n in range(3):
        index.record("", "a", f"1.2.{n}")
    assert index.holders(["1.2.0"]) == {"1.2.0": "a"}  # asked for: kept
    index.record("", "b", "1.2.3")  # over the limit: 1.2.1 is the least recently used
    assert index.holders(["1.2.0", "1.2.1", "1.2.2", "1.2.3"]) == {
        "1.2.0": "a",
        "1.2.2": "a",
        "1.2.3": "b",
    }
