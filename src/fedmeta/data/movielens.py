"""MovieLens ratings with each user a client: cold-start rating prediction.

The source is dslabs' `movielens`, the October 2016 "ml-latest-small" release of GroupLens'
MovieLens (Harper & Konstan 2015, TiiS 5(4)): 100,004 ratings (0.5-5 stars) of 9,066
movies by 671 users. Each row here is one rating: the user who gave it (the client), the
rating (the regression target) and the movie's features: its 19 genres as 0/1 columns
(`genre_*`), its release year, and its age in years when it was rated. Users with 30 to
300 ratings are kept (474 users, 47,969 ratings with a release year), so that every user has a 20-rating support
set and a 10-rating query set, as MeLU keeps users with 13-100 (Lee et al., KDD 2019).

Per-user adaptation is what cold start asks of a meta-learned model: from a new user's
first few ratings, their bias and genre tastes. Nothing identifies a movie beyond its
features, so a new movie is scored as readily as a seen one.
"""

from __future__ import annotations

from typing import Any

PACKAGE, NAME = "dslabs", "movielens"
DEFAULTS = {"client_column": "user", "label_column": "rating", "task": "regression"}
MIN_RATINGS, MAX_RATINGS = 30, 300


def shape(frame: Any) -> Any:
    import pandas as pd

    counts = frame.groupby("userId")["rating"].transform("size")
    frame = frame[(counts >= MIN_RATINGS) & (counts <= MAX_RATINGS) & frame["year"].notna()]
    genres = frame["genres"].str.get_dummies(sep="|").drop(columns=["(no genres listed)"], errors="ignore")
    rated = pd.to_datetime(frame["timestamp"], unit="s").dt.year
    out = pd.DataFrame({"user": "u" + frame["userId"].astype(str), "rating": frame["rating"],
                        "year": frame["year"].astype(int), "age_when_rated": (rated - frame["year"]).clip(lower=0).astype(int)})
    out = pd.concat([out, genres.add_prefix("genre_").astype(int)], axis=1)
    return out.sort_values("user", kind="stable").reset_index(drop=True)
