"""MovieLens ratings with each user a client: cold-start rating prediction.

The source is dslabs' `movielens`, the October 2016 "ml-latest-small" release of GroupLens'
MovieLens (Harper & Konstan 2015, TiiS 5(4)): 100,004 ratings (0.5-5 stars) of 9,066
movies by 671 users. Each row here is one rating: the user who gave it (the client), the
rating (the regression target) and the movie's features: its 19 genres as 0/1 columns
(`genre_*`), its release year, its age in years when it was rated, and its id (`movie`),
which `data.index_columns = ["movie"]` turns into a learned embedding (`models.EmbeddingMLP`). Users with 30 to
300 ratings are kept (474 users, 47,969 ratings with a release year), so that every user has a 20-rating support
set and a 10-rating query set, as MeLU keeps users with 13-100 (Lee et al., KDD 2019).

Per-user adaptation is what cold start asks of a meta-learned model: from a new user's
first few ratings, their bias and genre tastes. Without the embedding nothing identifies a
movie beyond its features, so a new movie is scored as readily as a seen one; with it,
every movie of the table has a row of its own (the vocabulary is the schema's).
"""

from __future__ import annotations

from typing import Any

PACKAGE, NAME = "dslabs", "movielens"
GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
FEATURES = ["year", "age_when_rated", *("genre_" + g for g in GENRES)]  # `movie` too for an embedding
DEFAULTS = {"client_column": "user", "label_column": "rating", "task": "regression", "features": FEATURES}
MIN_RATINGS, MAX_RATINGS = 30, 300


def shape(frame: Any) -> Any:
    import pandas as pd

    counts = frame.groupby("userId")["rating"].transform("size")
    frame = frame[(counts >= MIN_RATINGS) & (counts <= MAX_RATINGS) & frame["year"].notna()]
    genres = frame["genres"].str.get_dummies(sep="|").drop(columns=["(no genres listed)"], errors="ignore")
    rated = pd.to_datetime(frame["timestamp"], unit="s").dt.year
    out = pd.DataFrame({"user": "u" + frame["userId"].astype(str), "movie": "m" + frame["movieId"].astype(str),
                        "rating": frame["rating"],
                        "year": frame["year"].astype(int), "age_when_rated": (rated - frame["year"]).clip(lower=0).astype(int)})
    out = pd.concat([out, genres.add_prefix("genre_").astype(int)], axis=1)
    return out.sort_values("user", kind="stable").reset_index(drop=True)
