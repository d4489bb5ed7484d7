"""The job kinds: what each long-running POST does, as calls into `api.core.Core`.

| kind               | after an API crash while running                                   |
|--------------------|--------------------------------------------------------------------|
| snapshot.create    | re-queued: the cut is resolved first and saved as the job's plan,  |
|                    | so the re-run builds the very same snapshot (id = f(cut, tables)); |
|                    | a build cut off before its plan was saved resolves "latest" again  |
| connector.apply    | re-queued: applying a connector config twice converges             |
| connector.restart  | failed ("interrupted by API restart"): retry if still wanted       |
| train, rebuild     | failed: each logs an MLflow run, a blind re-run would log two      |
"""

from __future__ import annotations

from typing import Any

from api.config import ApiConfig
from api.core import Core, cut_or_latest
from api.errors import HttpError
from api.jobs import JobContext, JobKind
from snapshotter.cut import Cut
from snapshotter.manifest import Manifest

__all__ = ["job_kinds", "snapshot_result", "check_recipe", "snapshot_params"]


def snapshot_result(manifest: Manifest) -> dict[str, Any]:
    return {"snapshot_id": manifest.id, "digest": manifest.digest,
            "created_at": manifest.created_at, "built_from": manifest.built_from,
            "cut": manifest.cut.to_json(),
            "tables": {n: {"rows": t.rows, "digest": t.digest}
                       for n, t in sorted(manifest.tables.items())},
            "links": {"snapshot": f"/snapshots/{manifest.id}"}}


def snapshot_params(tables: list[str], at: Any, allow_stale: bool = False) -> dict[str, Any]:
    params = {"tables": sorted(set(tables)), "at": at}
    if allow_stale:  # only when asked: the params of every other request stay as they were
        params["allow_stale"] = True
    return params


def check_recipe(config: ApiConfig, reference: str) -> None:
    """Refuse (403) unless `reference` names a function marked `@recipe` that a module
    listed in TIDELOG_API_RECIPES defines itself: the module prefix alone would let any
    callable that module imports (`examples.shop:psycopg.connect`) run as a recipe."""
    from trainer.recipe import find_callable, is_recipe

    if not config.recipe_allowed(reference):
        allowed = ", ".join(config.recipe_modules) or "none"
        raise HttpError(
            403, "recipe_not_allowed",
            f"recipe {reference} is not in a module this API may import (allowed: "
            f"{allowed}); a recipe runs as code inside the API, so the operator lists "
            "module prefixes in TIDELOG_API_RECIPES", recipe=reference)
    module_name = reference.partition(":")[0]
    _, fn = find_callable(reference)  # imports the (allowed) module
    defined_in = getattr(fn, "__module__", None)
    if defined_in != module_name:
        raise HttpError(
            403, "recipe_not_allowed",
            f"recipe {reference} is not defined in {module_name} (it comes from "
            f"{defined_in or 'elsewhere'}); the API runs only functions that a module in "
            "TIDELOG_API_RECIPES defines itself and marks with @recipe", recipe=reference)
    if not is_recipe(fn):
        raise HttpError(
            403, "recipe_not_allowed",
            f"{reference} is not marked as a recipe; decorate it with @recipe(...) from "
            "trainer.recipe to let the API run it", recipe=reference)


def _since(value: Any) -> str | Cut | None:
    if value is None or isinstance(value, str):
        return value
    return Cut.from_json(value)


def job_kinds(core: Core, config: ApiConfig) -> dict[str, JobKind]:
    settings = core.settings

    def snapshot_create(ctx: JobContext) -> dict[str, Any]:
        tables = ctx.params["tables"]
        if ctx.plan is None:
            cut = core.resolve_cut(tables, cut_or_latest(ctx.params["at"]),
                                   allow_stale=bool(ctx.params.get("allow_stale")))
            ctx.save_plan({"cut": cut.to_json()})
        assert ctx.plan is not None
        manifest = core.create_snapshot(tables, Cut.from_json(ctx.plan["cut"]))
        core.lineage_cache.clear()
        return snapshot_result(manifest)

    def train(ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        check_recipe(config, p["recipe"])
        at = None if p.get("snapshot_id") else cut_or_latest(p.get("at"))
        return core.train(p["recipe"], snapshot_id=p.get("snapshot_id"), at=at,
                          tables=p.get("tables"), params=p.get("params") or {},
                          seed=p.get("seed", 0), register=p.get("register_as"),
                          since=_since(p.get("since")),
                          experiment=p.get("experiment", "tidelog"))

    def rebuild(ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        experiment = p.get("experiment", "tidelog")
        check_recipe(config, core.run_recipe_of(p["run_id"], experiment))
        return core.rebuild(p["run_id"], experiment,
                            without_erased=bool(p.get("without_erased", False)))

    def connector_apply(ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        name = p.get("name") or settings.connector_name
        status, warnings = core.connector_apply(
            name, p["tables"], p.get("topic_prefix") or settings.topic_prefix,
            float(p.get("timeout", 120)), bool(p.get("replica_identity_full", False)))
        return {"connector": name, "status": status, "warnings": warnings}

    def connector_restart(ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        name = p.get("name") or settings.connector_name
        return {"connector": name,
                "status": core.connector_restart(name, float(p.get("timeout", 120)))}

    kinds = [
        JobKind("snapshot.create", snapshot_create, requeue_on_restart=True),
        JobKind("train", train),
        JobKind("rebuild", rebuild),
        JobKind("connector.apply", connector_apply, requeue_on_restart=True),
        JobKind("connector.restart", connector_restart),
    ]
    return {k.name: k for k in kinds}
