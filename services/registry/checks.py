"""What every registry decision checks: identifiers, lists without repeats, create/update modes, and "nothing
changed"."""

from __future__ import annotations

from switchyard_gateway.catalog import rules
from switchyard_gateway.contracts import events as ev
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit.natsio import ServiceError

Decision = tuple[list[ev.Event], str | None, str | None]
OPERATORS = "admin"         # the operators' tenant: it holds the bootstrap admin key (SWITCHYARD_ADMIN_KEY)


def invalid(code: str, message: str, field: str | None = None, status: int = 400) -> ServiceError:
    return ServiceError(status, ErrorBody(code, message, field))


def check(problem: str | None, field: str, code: str = "VALIDATION_ERROR") -> None:
    if problem:
        raise invalid(code, problem, field)


def check_identifier(value: str, field: str) -> None:
    check(rules.identifier_problem(value), field, "INVALID_IDENTIFIER")


def check_model_name(value: str, field: str) -> None:
    check(rules.model_name_problem(value), field)


def check_duplicates(values: tuple[str, ...], field: str) -> None:
    """400 naming the first item of a list (`models[1]`) that an earlier one already holds."""
    repeated = rules.duplicate(values, field)
    if repeated is not None:
        raise invalid("VALIDATION_ERROR", repeated[1], f"{field}[{repeated[0]}]")


def not_found(code: str, what: str, ident: str, field: str | None = None) -> ServiceError:
    return invalid(code, f"{what} '{ident}' not found", field, status=404)


Registering = m.CreateTenant | m.RegisterProvider | m.RegisterEndpoint | m.RegisterModel | m.AssignModel


def check_mode(command: Registering, current: ev.Event | None, what: str, ident: str, field: str) -> None:
    """409 for a create of something that exists, 404 for an update of something that does not, and 409
    CHANGED when the command was made from a state (`if_match`, an event id) the resource no longer has."""
    mode, exists = command.mode, current is not None
    if mode == "create" and exists:
        raise invalid("CONFLICT", f"{what} '{ident}' already exists; update it with PUT", field, status=409)
    if mode == "update" and not exists:
        raise not_found(f"{what.upper()}_NOT_FOUND", what, ident, field)
    if command.if_match is not None and current is not None and str(current.event_id) != command.if_match:
        raise invalid("CHANGED", f"{what} '{ident}' was changed by another request meanwhile: read it and try again",
                      None, status=409)


def same(old: ev.Event | None, new: ev.Event) -> bool:
    """Full-state events are equal when all but their identity and time match."""
    if old is None or type(old) is not type(new):
        return False
    skip = {"event_id", "occurred_at"}
    return all(getattr(old, f) == getattr(new, f) for f in old.__struct_fields__ if f not in skip)


def fields_of(command: m.Command, drop: tuple[str, ...] = ("mode", "if_match")) -> dict[str, object]:
    return {f: getattr(command, f) for f in command.__struct_fields__ if f not in drop}


