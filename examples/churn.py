"""Demo recipe: a scikit-learn churn classifier over customers, subscriptions, payments.

Expected tables and columns (other columns are ignored, so a column added to a table later
changes nothing). Tables are found by name in any source schema: `public.customers` or
`shop_3.customers` (the demo gives each run its own schema); when several schemas hold a
`customers` table, `public` wins.

- public.customers: id, signup_date (date or timestamp), churned (bool; optional — when
  absent a customer has churned when none of their subscriptions is active)
- public.subscriptions: id, customer_id, monthly_fee (numeric), cancelled_at (nullable)
- public.payments: id, customer_id, amount (numeric), status ('paid' / 'failed')

Everything is derived from the data and `seed`, never from the clock: the "as of" date of
the tenure feature is the newest date in the snapshot, so a rebuild computes the same.

Params: model = "logreg" (default) | "forest"; n_estimators, max_depth (forest); C
(logreg); test_size (default 0.25).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from trainer.recipe import RecipeResult, recipe

__all__ = ["TABLES", "FEATURES", "train", "evaluate", "features", "find_table", "demo_tables"]

TABLES = ("public.customers", "public.subscriptions", "public.payments")
FEATURES = ["tenure_days", "n_subscriptions", "mean_fee", "n_payments", "failed_ratio",
            "total_paid"]


def _as_datetime(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Datetime("us")).alias(column)


def find_table(tables: dict[str, pl.DataFrame], name: str) -> pl.DataFrame:
    """The table called `name` in whichever schema the snapshot holds it."""
    if f"public.{name}" in tables:
        return tables[f"public.{name}"]
    found = sorted(t for t in tables if t.rpartition(".")[2] == name)
    if len(found) != 1:
        raise KeyError(f"the churn recipe needs exactly one table named {name!r}; the "
                       f"snapshot has {', '.join(sorted(tables)) or 'no tables'}")
    return tables[found[0]]


def features(tables: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, pl.Series]:
    customers = find_table(tables, "customers")
    subs = find_table(tables, "subscriptions").select(
        "customer_id", pl.col("monthly_fee").cast(pl.Float64),
        pl.col("cancelled_at").is_null().alias("active"))
    pays = find_table(tables, "payments").select(
        "customer_id", pl.col("amount").cast(pl.Float64),
        (pl.col("status") == "failed").alias("failed"))

    base = customers.select("id", _as_datetime("signup_date"))
    as_of = base["signup_date"].max() or dt.datetime(1970, 1, 1)
    sub_stats = subs.group_by("customer_id").agg(
        pl.len().alias("n_subscriptions"),
        pl.col("monthly_fee").mean().alias("mean_fee"),
        pl.col("active").any().alias("any_active"))
    pay_stats = pays.group_by("customer_id").agg(
        pl.len().alias("n_payments"), pl.col("failed").mean().alias("failed_ratio"),
        pl.col("amount").filter(~pl.col("failed")).sum().alias("total_paid"))
    joined = (base.join(sub_stats, left_on="id", right_on="customer_id", how="left")
              .join(pay_stats, left_on="id", right_on="customer_id", how="left")
              .sort("id"))
    frame = joined.select(
        ((pl.lit(as_of) - pl.col("signup_date")).dt.total_days()).cast(pl.Float64)
        .alias("tenure_days"),
        pl.col("n_subscriptions").fill_null(0).cast(pl.Float64),
        pl.col("mean_fee").fill_null(0.0),
        pl.col("n_payments").fill_null(0).cast(pl.Float64),
        pl.col("failed_ratio").fill_null(0.0),
        pl.col("total_paid").fill_null(0.0),
    )
    if "churned" in customers.columns:
        label = customers.sort("id")["churned"].cast(pl.Int8)
    else:
        label = (~joined["any_active"].fill_null(False)).cast(pl.Int8)
    return frame, label.alias("churned")


def _model(params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kind = str(params.get("model", "logreg"))
    if kind == "forest":
        max_depth = params.get("max_depth")
        return RandomForestClassifier(
            n_estimators=int(params.get("n_estimators", 50)),
            max_depth=int(max_depth) if max_depth is not None else None,
            random_state=seed, n_jobs=1)
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=float(params.get("C", 1.0)), max_iter=1000, random_state=seed))
    raise ValueError(f"unknown model {kind!r}; use 'logreg' or 'forest'")


def _split(tables: dict[str, pl.DataFrame], params: dict[str, Any], seed: int) -> Any:
    from sklearn.model_selection import train_test_split

    frame, label = features(tables)
    x = frame.to_pandas()
    y = label.to_numpy()
    if len(set(y.tolist())) < 2:
        raise ValueError(f"all {len(y)} customers have churned={y[0]}; a classifier needs "
                         "both classes (a --since window may be too narrow)")
    return x, y, train_test_split(x, y, test_size=float(params.get("test_size", 0.25)),
                                  random_state=seed, stratify=y)


def _score(model: Any, x_test: Any, y_test: Any) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, roc_auc_score

    metrics = {"accuracy": float(accuracy_score(y_test, model.predict(x_test)))}
    if len(set(y_test.tolist())) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))
    return metrics


@recipe(tables=TABLES)
def train(tables: dict[str, pl.DataFrame], params: dict[str, Any], seed: int
          ) -> RecipeResult:
    x, y, (x_train, x_test, y_train, y_test) = _split(tables, params, seed)
    model = _model(params, seed).fit(x_train, y_train)
    metrics = {**_score(model, x_test, y_test), "rows": float(len(x)),
               "churn_rate": float(y.mean())}
    return RecipeResult(model=model, metrics=metrics, features=x)


def evaluate(tables: dict[str, pl.DataFrame], params: dict[str, Any], seed: int, model: Any
             ) -> dict[str, float]:
    """Score any model on the held-out split `train` would make of these tables: the
    pipeline gate scores challenger and champion with it on the same rows."""
    _x, _y, (_x_train, x_test, _y_train, y_test) = _split(tables, params, seed)
    return _score(model, x_test, y_test)


def demo_tables(customers: int = 200, seed: int = 0) -> dict[str, pl.DataFrame]:
    """Synthetic tables with the columns above, for tests and the demo."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.arange(1, customers + 1)
    signup = [dt.date(2023, 1, 1) + dt.timedelta(days=int(d))
              for d in rng.integers(0, 700, customers)]
    n_subs = rng.integers(1, 3, customers)
    sub_customer = np.repeat(ids, n_subs)
    fee = rng.choice([9.99, 19.99, 49.99], len(sub_customer))
    risk = rng.random(customers)
    cancelled = [dt.datetime(2024, 6, 1) if risk[c - 1] > 0.6 or rng.random() < 0.1 else None
                 for c in sub_customer]
    n_pays = rng.integers(2, 14, customers)
    pay_customer = np.repeat(ids, n_pays)
    failed = rng.random(len(pay_customer)) < risk[pay_customer - 1] ** 2
    subscriptions = pl.DataFrame({
        "id": np.arange(1, len(sub_customer) + 1), "customer_id": sub_customer,
        "monthly_fee": fee, "cancelled_at": cancelled})
    active = (subscriptions.group_by("customer_id")
              .agg(pl.col("cancelled_at").is_null().any().alias("active")).sort("customer_id"))
    customers_frame = pl.DataFrame({"id": ids, "signup_date": signup,
                                    "country": rng.choice(["DE", "FR", "US"], customers)})
    customers_frame = customers_frame.join(
        active, left_on="id", right_on="customer_id", how="left").with_columns(
        (~pl.col("active").fill_null(False)).alias("churned")).drop("active")
    payments = pl.DataFrame({
        "id": np.arange(1, len(pay_customer) + 1), "customer_id": pay_customer,
        "amount": rng.choice([9.99, 19.99, 49.99], len(pay_customer)),
        "status": np.where(failed, "failed", "paid")})
    return {"public.customers": customers_frame, "public.subscriptions": subscriptions,
            "public.payments": payments}
