"""The admin API: keys and usage over HTTP, behind the admin key.

Present only when ``[auth] admin_key_env`` names a variable holding the admin
key; it is sent like any key (``Authorization: Bearer ...`` or
``x-api-key``) and compared in constant time.

    POST   /admin/keys                 {"name": "team-a", "rpm": 60, ...} -> 201, with "key" (once)
    GET    /admin/keys                 every key (the file's too), never a hash
    GET    /admin/keys/<id>
    PATCH  /admin/keys/<id>            the fields to change
    POST   /admin/keys/<id>/revoke     (DELETE /admin/keys/<id> does the same)
    GET    /admin/usage/<id>?period=2026-01     (or a day: 2026-01-31; default: this month)
    GET    /admin/usage?period=...     every key's

Errors are OpenAI-shaped: 400 naming the field, 401, 404, 409 (a name in
use, or a key of the config file), 503 (the store failed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import orjson
from quart import Quart, Response, request

from server.api.chat_completions import json_object
from server.errors import LimitsUnavailable, RequestError, SluiceError, Unauthorized, http_error
from server.keys.admin import KeyAdmin, KeyNotFound, StaticKey
from server.keys.directory import presented_key
from server.keys.record import KeyFieldError
from server.keys.secret import key_hash, verify
from server.limits.store import KeyNameTaken, StoreUnavailable

View = Callable[..., Awaitable[Response]]


def register_admin_api(app: Quart, admin_key: str, admin: Callable[[], KeyAdmin | None]) -> None:
    """Add the ``/admin`` routes, for callers holding ``admin_key``."""
    admin_hash = key_hash(admin_key)

    def guarded(view: Callable[..., Awaitable[Any]]) -> View:
        @wraps(view)
        async def checked(**kwargs: Any) -> Response:
            presented = presented_key(request.headers)
            if presented is None or not verify(presented, admin_hash):
                raise Unauthorized("Invalid admin key.")
            service = admin()
            if service is None:
                raise LimitsUnavailable(1.0, detail="not serving")
            try:
                result = await view(service, **kwargs)
            except KeyFieldError as error:
                raise RequestError(str(error), param=error.field, code="invalid_value") from None
            except ValueError as error:  # StaticKey, a bad period
                if isinstance(error, StaticKey):
                    raise _conflict("This key comes from the config file; change it there.",
                                    "static_key") from None
                raise RequestError(str(error), code="invalid_value") from None
            except KeyNameTaken:
                raise _conflict("Another key has this name.", "name_taken") from None
            except KeyNotFound:
                raise http_error(404, "No key has this id.", type_="not_found_error",
                                 code="key_not_found") from None
            except StoreUnavailable as error:
                raise LimitsUnavailable(1.0, detail=str(error)) from None
            if isinstance(result, Response):
                return result
            return _json(result)

        return checked

    @app.post("/admin/keys")
    @guarded
    async def create_key(service: KeyAdmin) -> Response:
        record, key = await service.create(json_object(await request.get_data(False, False, False)))
        return _json({**record.public(), "key": key}, status=201)

    @app.get("/admin/keys")
    @guarded
    async def list_keys(service: KeyAdmin) -> dict[str, Any]:
        return {"object": "list", "data": [record.public() for record in await service.list()]}

    @app.get("/admin/keys/<key_id>")
    @guarded
    async def get_key(service: KeyAdmin, key_id: str) -> dict[str, Any]:
        return (await service.get(key_id)).public()

    @app.patch("/admin/keys/<key_id>")
    @guarded
    async def update_key(service: KeyAdmin, key_id: str) -> dict[str, Any]:
        document = json_object(await request.get_data(False, False, False))
        return (await service.update(key_id, document)).public()

    @app.post("/admin/keys/<key_id>/revoke")
    @app.delete("/admin/keys/<key_id>")
    @guarded
    async def revoke_key(service: KeyAdmin, key_id: str) -> dict[str, Any]:
        return (await service.revoke(key_id)).public()

    @app.get("/admin/usage/<key_id>")
    @guarded
    async def key_usage(service: KeyAdmin, key_id: str) -> dict[str, Any]:
        return await service.usage(key_id, request.args.get("period"))

    @app.get("/admin/usage")
    @guarded
    async def all_usage(service: KeyAdmin) -> dict[str, Any]:
        period = request.args.get("period")
        return {"object": "list",
                "data": [await service.usage(r.id, period) for r in await service.list()]}


def _conflict(message: str, code: str) -> SluiceError:
    return http_error(409, message, type_="invalid_request_error", code=code)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")
