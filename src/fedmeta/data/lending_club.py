"""Lending Club loans with banks by state: credit risk across lenders.

The source is openintro's `loans_full_schema`: 10,000 loans that Lending Club made in
January-March 2018, with the borrower's application and credit file. Each state is a bank
(a lender in that market); states with fewer than 100 loans are pooled by census region
("small-northeast", "small-midwest", "small-south", "small-west"), a small bank each.

The target is a high-risk grade, D to G (1,851 loans, 18.5%), against A to C. Default is
not observable here: the loans were a few months old, 7 had been charged off and 171 were
late or in grace. The grade is the lender's own risk assessment from the full file, so
predicting it from the application is learning the risk model; interest rate, sub-grade
and installment are set from the grade and are left out, as is everything known only after
the loan was made (status, payments, balance).
"""

from __future__ import annotations

from typing import Any

PACKAGE, NAME = "openintro", "loans_full_schema"
DEFAULTS = {"client_column": "bank", "label_column": "risk", "task": "classification", "labels": ["low", "high"]}
MIN_LOANS = 100  # a state with fewer is pooled into its region's small bank
FEATURES = ["annual_income", "debt_to_income", "emp_length", "homeownership", "verified_income", "delinq_2y",
            "earliest_credit_line", "inquiries_last_12m", "total_credit_lines", "open_credit_lines", "total_credit_limit",
            "total_credit_utilized", "num_historical_failed_to_pay", "accounts_opened_24m", "num_mort_accounts",
            "public_record_bankrupt", "loan_purpose", "application_type", "loan_amount", "term"]
REGIONS = {  # the US Census Bureau's four regions
    "northeast": "CT ME MA NH RI VT NJ NY PA",
    "midwest": "IL IN MI OH WI IA KS MN MO NE ND SD",
    "south": "DE DC FL GA MD NC SC VA WV AL KY MS TN AR LA OK TX",
    "west": "AZ CO ID MT NV NM UT WY AK CA HI OR WA",
}


def shape(frame: Any) -> Any:
    import numpy as np

    region = {state: name for name, states in REGIONS.items() for state in states.split()}
    counts = frame.groupby("state")["state"].transform("size")
    bank = frame["state"].where(counts >= MIN_LOANS, "small-" + frame["state"].map(region))
    out = frame[FEATURES].copy()
    out["annual_income"] = np.log1p(out["annual_income"])
    out["emp_length"] = out["emp_length"].fillna(0)  # not employed, or not stated
    out["debt_to_income"] = out["debt_to_income"].fillna(out["debt_to_income"].median())
    out.insert(0, "bank", bank)
    out["risk"] = np.where(frame["grade"].isin(["D", "E", "F", "G"]), "high", "low")
    return out.sort_values("bank", kind="stable").reset_index(drop=True)
