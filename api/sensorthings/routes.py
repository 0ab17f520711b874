"""The SensorThings routes: ``/sta/{version}`` (the service root), and per entity set
the collection, one entity (``Things('air-0001')``) and anything below one
(``Things('air-0001')/Datastreams``, ``Datastreams('...')/Observations``, a property,
``/$value``). Public, rate-limited like the rest of the public data."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse

from api.deps import PUBLIC, context, public
from api.errors import ApiError, ErrorBody
from api.paging import absolute_url
from api.sensorthings.filter import FilterError
from api.sensorthings.model import SETS
from api.sensorthings.service import VERSIONS, NotFound, StaService
from civic_iot.auth import Principal

__all__ = ["router"]

Version = Enum("Version", {v.replace(".", "_"): v for v in VERSIONS}, type=str)  # type: ignore[misc]

router = APIRouter(
    prefix="/sta",
    tags=["SensorThings"],
    responses={
        400: {"model": ErrorBody, "description": "Bad path or query option (named)"},
        404: {"model": ErrorBody, "description": "No such entity or entity set"},
        429: {"model": ErrorBody, "description": "Rate limit without a token spent"},
        503: {"model": ErrorBody, "description": "InfluxDB unavailable"},
    },
)

_QUERY_DOC = (
    "Query options: `$top`, `$skip`, `$count`, `$orderby`, `$select`, `$expand` (nested, "
    "`Nav($top=1;$orderby=phenomenonTime desc)`), `$filter` (comparisons, `and`/`or`/`not`, "
    "arithmetic, string, date/time and rounding functions, `geo.distance`)."
)


EntityId = Annotated[
    str,
    PathParam(description="the entity's id in quotes, e.g. 'air-0001'", examples=["'air-0001'"]),
]
Rest = Annotated[str, PathParam(description="a navigation, property or /$value below the entity")]


def _service(request: Request) -> StaService:
    ctx = context(request)
    svc: StaService | None = getattr(request.app.state, "sta", None)
    if svc is None:
        svc = StaService(ctx.settings, ctx.flux)
        request.app.state.sta = svc
    return svc


def _base(request: Request, version: str) -> str:
    url = request.url.replace(path=f"/sta/{version}", query="")
    return absolute_url(request, url).rstrip("?")


async def _answer(request: Request, version: str, path: str) -> Any:
    ctx = context(request)
    registry = ctx.registry.get()
    svc = _service(request)
    graph = svc.graph(registry, ctx.registry.version, version)
    try:
        doc = await svc.answer(
            graph,
            _base(request, version),
            path,
            list(request.query_params.multi_items()),
            request.url.query,
        )
    except FilterError as exc:
        raise ApiError(400, str(exc)) from None
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    if isinstance(doc, str):
        return PlainTextResponse(doc)
    return JSONResponse(doc)


@router.get(
    "/{version}",
    summary="SensorThings service root: the entity sets",
    openapi_extra=PUBLIC,
)
async def service_root(
    request: Request, _who: Annotated[Principal | None, Depends(public)], version: Version
) -> JSONResponse:
    return JSONResponse(StaService.root(_base(request, version.value)))


def _add_set(set_name: str) -> None:
    singular = SETS[set_name].singular

    async def collection(
        request: Request,
        _who: Annotated[Principal | None, Depends(public)],
        version: Version,
    ) -> Any:
        return await _answer(request, version.value, set_name)

    async def entity(
        request: Request,
        _who: Annotated[Principal | None, Depends(public)],
        version: Version,
        entity_id: EntityId,
    ) -> Any:
        return await _answer(request, version.value, f"{set_name}({entity_id})")

    async def below(
        request: Request,
        _who: Annotated[Principal | None, Depends(public)],
        version: Version,
        entity_id: EntityId,
        rest: Rest,
    ) -> Any:
        return await _answer(request, version.value, f"{set_name}({entity_id})/{rest}")

    for fn, path, summary in (
        (collection, f"/{{version}}/{set_name}", f"{set_name}. {_QUERY_DOC}"),
        (entity, f"/{{version}}/{set_name}({{entity_id}})", f"One {singular}"),
        (
            below,
            f"/{{version}}/{set_name}({{entity_id}})/{{rest:path}}",
            f"Below one {singular}: a navigation (with the query options), a property, /$value",
        ),
    ):
        fn.__name__ = f"{fn.__name__}_{set_name}"
        router.add_api_route(
            path,
            fn,
            methods=["GET"],
            summary=summary.split(". ")[0],
            description=summary,
            openapi_extra=PUBLIC,
            response_class=JSONResponse,
        )


for _name in SETS:
    _add_set(_name)
