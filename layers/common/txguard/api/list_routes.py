"""Lists and their items (POST/GET /lists, GET/PATCH /lists/{name}, POST/GET /lists/{name}/items,
DELETE /lists/{name}/items/{value}, POST /lists/{name}/removals, GET /lists/{name}/changes), served by the lists
function.

Every change is recorded with who made it: the API key's id API Gateway gives the request
(`requestContext.identity.apiKeyId`), as `api_key:<id>`; `api` when there is none.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema, field_validator

from txguard import list_service as service
from txguard import lists
from txguard.api.errors import COMMON_ERRORS, ApiError, documented_errors
from txguard.api.presenters import json_response
from txguard.api.response_size import PAGE_DESCRIPTION, PAGE_HEADERS, page_response
from txguard.api.schemas import integer_text
from txguard.attributes import ListKind
from txguard.intake import TIMESTAMP_SCHEMA
from txguard.storage.lists import encode_cursor

router = Router()

ListName = Annotated[
    str, Path(pattern=lists.LIST_NAME_PATTERN, max_length=63, description="the list's name (as a rule id)")
]
KINDS = ListKind


def actor_of(event: Any) -> str:
    """Who sent the request, as the audit records it: `api_key:<API Gateway's key id>`, or `api`."""
    context = getattr(event, "request_context", None)
    identity = getattr(context, "identity", None)
    key_id = getattr(identity, "api_key_id", None)
    if isinstance(key_id, str) and key_id.strip():
        try:
            return lists.actor(f"api_key:{key_id.strip()}")
        except ValueError:
            pass  # an id API Gateway would never send: recorded as the API
    return "api"


def _actor() -> str:
    return actor_of(router.current_event)


class ListIn(BaseModel):
    """A new list."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=lists.LIST_NAME_PATTERN, description="lower-case letters, digits, '_'")]
    kind: Annotated[KINDS, Field(description="what its values are: the transaction field they match")]
    action: Annotated[
        Literal["allow", "block"] | None,
        Field(description="null: only rules read it; allow / block: a match also decides by itself"),
    ] = None
    description: Annotated[str | None, Field(max_length=lists.MAX_DESCRIPTION_LENGTH)] = None

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, value: Any) -> str | None:
        return lists.description(value)


class ListChangeIn(BaseModel):
    """A list's new action and/or description (its kind never changes)."""

    model_config = ConfigDict(extra="forbid")

    action: Annotated[Literal["allow", "block"] | None, Field(description="null: only rules read it")] = None
    description: Annotated[str | None, Field(max_length=lists.MAX_DESCRIPTION_LENGTH)] = None

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, value: Any) -> str | None:
        return lists.description(value)


# An item's fields are checked against its list's kind (txguard.lists.check_items), which the body cannot know:
# the schema documents them, the route validates them.
ItemValue = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "integer"}],
            "description": "a value of the list's kind: an account id, a merchant, card or device id, an ISO "
            "3166-1 alpha-2 country, an IPv4/IPv6 address, an ISO 18245 merchant category",
        }
    ),
]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: ItemValue
    expires_at: Annotated[
        Any,
        TIMESTAMP_SCHEMA,
        Field(description="epoch ms or RFC 3339 with a zone, in the future; omitted or null: never expires"),
    ] = None
    note: Annotated[
        Any,
        WithJsonSchema(
            {"type": "string", "maxLength": lists.MAX_NOTE_LENGTH, "description": "optional, 1-200 characters"}
        ),
    ] = None


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: Annotated[
        list[Any],
        Field(min_length=1),
        WithJsonSchema({"type": "array", "items": ItemIn.model_json_schema(), "minItems": 1}),
    ]


class ValuesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: Annotated[list[ItemValue], Field(min_length=1)]


def _item_kind(value: Any) -> str:
    return "items_batch" if isinstance(value, dict) and "items" in value else "item"


ItemsBody = Annotated[
    Annotated[dict[str, Any], Tag("item"), WithJsonSchema(ItemIn.model_json_schema())]
    | Annotated[ItemBatch, Tag("items_batch")],
    Discriminator(_item_kind),
]


class ListOut(BaseModel):
    name: str
    kind: str
    action: str | None
    description: str | None
    version: int = Field(description="incremented by every change of the list or its items")
    items: int = Field(description="items held, expired ones included")
    created_at: int = Field(description="epoch ms")
    created_by: str
    updated_at: int = Field(description="epoch ms: the last change")
    updated_by: str


class ListsPage(BaseModel):
    lists: list[ListOut]
    next_cursor: str | None


class ItemOut(BaseModel):
    value: str
    expires_at: int | None = Field(description="epoch ms; null: never expires")
    note: str | None
    added_at: int = Field(description="epoch ms")
    added_by: str
    active: bool = Field(description="false once expires_at has passed: the item no longer matches")


class ItemsPage(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None


class ChangedItemOut(BaseModel):
    value: str
    expires_at: int | None = Field(description="epoch ms: the expiry after the change (before it, for remove)")
    note: str | None


class ChangeOut(BaseModel):
    change_id: int
    version: int
    operation: Literal["create", "update", "add", "change", "remove"]
    items: list[ChangedItemOut] | None = Field(
        default=None,
        description="add, change, remove: the items (up to 1,000 per change; a larger write is "
        "several changes of one version)",
    )
    kind: str | None = Field(default=None, description="the definition after create or update")
    action: str | None = None
    description: str | None = None
    actor: str = Field(description="who: api_key:<id> (the API), cli:<user> (txguard lists), console:<user>")
    changed_at: int = Field(description="epoch ms")


class ChangesPage(BaseModel):
    changes: list[ChangeOut]
    next_cursor: str | None


class ItemsChangedOut(BaseModel):
    version: int = Field(description="the list's version after the request (unchanged when nothing changed)")
    added: int
    changed: int = Field(description="items present with another expiry or note, now updated")
    unchanged: int = Field(description="items present as sent (a retry changes nothing), or values not present")
    removed: int


_NOT_FOUND = {404: "no such list"}


@router.post(
    "/lists",
    summary="Create a list of values of one kind, optionally allowing or blocking by itself",
    description="The same definition sent again is answered 200 with the stored list (a retry); another "
    "definition under a stored name is refused 409.",
    responses={
        201: {"description": "created", "content": {"application/json": {"model": ListOut}}},
        200: {"description": "already stored as sent", "content": {"application/json": {"model": ListOut}}},
        **documented_errors({**COMMON_ERRORS, 409: "the name holds another definition", 422: "invalid fields"}),
    },
)
def create_list(body: Annotated[ListIn, Body()]) -> Response[str]:
    stored, created = service.create_list(body.name, body.kind, body.action, body.description, _actor())
    return json_response(201 if created else 200, stored.as_json())


@router.get(
    "/lists",
    summary="The lists, in order of name",
    responses={
        200: {
            "description": PAGE_DESCRIPTION,
            "headers": PAGE_HEADERS,
            "content": {"application/json": {"model": ListsPage}},
        },
        **documented_errors({**COMMON_ERRORS, 422: "a query parameter is invalid"}),
    },
)
def all_lists(
    limit: Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000, description="page size")] = 100,
    cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page")] = None,
) -> Response[str]:
    page = service.list_page(limit, cursor)
    return page_response(
        "lists", page.items, lambda s: s.as_json(), page.next_cursor, lambda s: encode_cursor("l", s.name)
    )


@router.get(
    "/lists/<name>",
    summary="One list",
    responses={
        200: {"description": "the list", "content": {"application/json": {"model": ListOut}}},
        **documented_errors({**COMMON_ERRORS, **_NOT_FOUND, 422: "not a list name"}),
    },
)
def one_list(name: ListName) -> Response[str]:
    return json_response(200, service.stored_list(name).as_json())


@router.patch(
    "/lists/<name>",
    summary="Change a list's action or description (a new version when either changes)",
    responses={
        200: {"description": "the list", "content": {"application/json": {"model": ListOut}}},
        **documented_errors({**COMMON_ERRORS, **_NOT_FOUND, 422: "invalid fields"}),
    },
)
def change_list(name: ListName, body: Annotated[ListChangeIn, Body()]) -> Response[str]:
    changes = {field: getattr(body, field) for field in body.model_fields_set}
    if not changes:
        reason = "send action and/or description"
        raise ApiError(422, "validation_error", reason, [{"index": None, "field": None, "value": {}, "reason": reason}])
    return json_response(200, service.redefine_list(name, changes, _actor()).as_json())


@router.post(
    "/lists/<name>/items",
    summary="Add one item or a batch to a list; an item present with another expiry or note is updated",
    description='The body is one item or `{"items": [...]}` of at most 10,000. All or nothing: if any item is '
    "invalid (a value not of the list's kind, an expiry not in the future, ...), nothing is stored and every "
    "problem is named by index, field, value and reason. Items already present as sent change nothing (a "
    "retry writes no version); the others are stored in one new version, each change audited.",
    responses={
        200: {"description": "stored", "content": {"application/json": {"model": ItemsChangedOut}}},
        **documented_errors(
            {**COMMON_ERRORS, **_NOT_FOUND, 413: "body too large", 422: "invalid items; nothing stored"}
        ),
    },
)
def add_items(name: ListName, body: Annotated[ItemsBody, Body()]) -> Response[str]:
    items = body.items if isinstance(body, ItemBatch) else [body]
    _bounded(items, "items")
    return json_response(200, service.add_list_items(name, items, _actor()).as_json())


@router.post(
    "/lists/<name>/removals",
    summary="Remove a batch of values from a list (those not present change nothing)",
    responses={
        200: {"description": "removed", "content": {"application/json": {"model": ItemsChangedOut}}},
        **documented_errors({**COMMON_ERRORS, **_NOT_FOUND, 422: "invalid values; nothing removed"}),
    },
)
def remove_items(name: ListName, body: Annotated[ValuesIn, Body()]) -> Response[str]:
    _bounded(body.values, "values")
    return json_response(200, service.remove_list_items(name, body.values, _actor()).as_json())


@router.delete(
    "/lists/<name>/items/<value>",
    summary="Remove one value from a list (a value not present changes nothing)",
    responses={
        200: {"description": "removed", "content": {"application/json": {"model": ItemsChangedOut}}},
        **documented_errors({**COMMON_ERRORS, **_NOT_FOUND, 422: "not a value of the list's kind"}),
    },
)
def remove_item(
    name: ListName, value: Annotated[str, Path(min_length=1, max_length=100, description="the value")]
) -> Response[str]:
    return json_response(200, service.remove_list_items(name, [value], _actor()).as_json())


@router.get(
    "/lists/<name>/items",
    summary="A list's items in order of value (expired ones included, marked inactive)",
    responses={
        200: {
            "description": PAGE_DESCRIPTION,
            "headers": PAGE_HEADERS,
            "content": {"application/json": {"model": ItemsPage}},
        },
        **documented_errors({**COMMON_ERRORS, **_NOT_FOUND, 422: "a query parameter is invalid"}),
    },
)
def list_items(
    name: ListName,
    value: Annotated[str | None, Query(max_length=100, description="only this value's item")] = None,
    limit: Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000, description="page size")] = 100,
    cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page")] = None,
) -> Response[str]:
    page = service.list_item_page(name, value, limit, cursor)
    return page_response(
        "items", page.items, lambda i: i.as_json(), page.next_cursor, lambda i: encode_cursor("i", i.value)
    )


@router.get(
    "/lists/<name>/changes",
    summary="A list's audit: every change, in order, with who and when",
    responses={
        200: {
            "description": PAGE_DESCRIPTION,
            "headers": PAGE_HEADERS,
            "content": {"application/json": {"model": ChangesPage}},
        },
        **documented_errors({**COMMON_ERRORS, **_NOT_FOUND, 422: "a query parameter is invalid"}),
    },
)
def list_changes(
    name: ListName,
    value: Annotated[
        str | None, Query(max_length=100, description="only the changes of this value (each with its item only)")
    ] = None,
    limit: Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000, description="page size")] = 100,
    cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page")] = None,
) -> Response[str]:
    page = service.list_change_page(name, value, limit, cursor)
    return page_response(
        "changes", page.items, lambda c: c.as_json(), page.next_cursor, lambda c: encode_cursor("c", c.change_id)
    )


def _bounded(items: list[Any], field: str) -> None:
    if len(items) > lists.MAX_ITEM_BATCH:
        raise ApiError(
            422,
            "batch_too_large",
            f"a request holds at most {lists.MAX_ITEM_BATCH} {field}; this one has {len(items)} (use txguard lists "
            "import for more)",
            [{"index": None, "field": field, "value": len(items), "reason": f"at most {lists.MAX_ITEM_BATCH}"}],
        )
