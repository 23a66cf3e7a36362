"""SARS-CoV-2 tests with each clinic a client: test positivity across hospitals' clinics.

The source is medicaldata's `covid_testing`: 15,524 tests at the Children's Hospital of
Philadelphia in 2020 (days 4-107 of the pandemic), de-identified, time-shifted and
permuted, donated by Amrom E. Obstfeld. Tests whose result was invalid (301) are left
out; 865 of the rest are positive (5.7%). Each clinic or ward with at least 50 tests is a
client; the smaller ones are pooled into one client, "other clinics".

The features are what is known when the sample is taken: age, gender, day of the
pandemic, drive-through collection, the test ordered, the order set, the demographic
group, the payer and the patient class (a missing payer or class is its own category,
"unknown"). The cycle threshold and the turnaround times are known only after the test
and are left out.
"""

from __future__ import annotations

from typing import Any

PACKAGE, NAME = "medicaldata", "covid_testing"
DEFAULTS = {"client_column": "clinic", "label_column": "result", "task": "classification",
            "labels": ["negative", "positive"]}
MIN_TESTS = 50  # a clinic with fewer is pooled into "other clinics"
CATEGORIES = ["gender", "test_id", "demo_group", "payor_group", "patient_class"]


def shape(frame: Any) -> Any:
    frame = frame[frame["result"] != "invalid"]
    counts = frame.groupby("clinic_name")["clinic_name"].transform("size")
    out = frame[["age", "pan_day", "drive_thru_ind", "orderset"]].copy()
    for name in CATEGORIES:
        out[name] = frame[name].fillna("unknown")
    out.insert(0, "clinic", frame["clinic_name"].where(counts >= MIN_TESTS, "other clinics"))
    out["result"] = frame["result"]
    return out.sort_values("clinic", kind="stable").reset_index(drop=True)
