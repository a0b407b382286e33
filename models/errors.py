"""Every error docraft reports, each with its HTTP status and stable code.

This is the one table that maps failures to HTTP answers: a handler raises one
of these, and the server turns it into the JSON error body
``{"error": {"code": ..., "message": ..., "details": {...}}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DocraftError(Exception):
    """Base of every error that reaches a client.

    ``status`` and ``code`` are class-level: a code never changes meaning.
    ``details`` carries machine-readable context (the field at fault, the
    leader to retry at, ...).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The error body sent to clients; the one shape for every error."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(DocraftError):
    """A parameter is missing, malformed or of the wrong type."""

    status = 400
    code = "bad_request"


class Unauthorized(DocraftError):
    """The request does not prove who sent it: no credentials, or ones that do not check out."""

    status = 401
    code = "unauthorized"


class Forbidden(DocraftError):
    """The caller is known but its role does not grant the permission the request needs."""

    status = 403
    code = "forbidden"


class HostNotAllowed(DocraftError):
    """The request's ``Host`` names none of the names this server answers to (``[http] hosts``)."""

    status = 421
    code = "host_not_allowed"


class PayloadTooLarge(DocraftError):
    """The request is larger than the cluster's ``[limits]`` allow: body bytes, or documents in one bulk request."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(DocraftError):
    """A POST that does not say ``Content-Type: application/json``."""

    status = 415
    code = "unsupported_media_type"


class NotFound(DocraftError):
    """No such endpoint, route or admin resource."""

    status = 404
    code = "not_found"


class MethodNotAllowed(DocraftError):
    """The endpoint exists but does not accept this HTTP method."""

    status = 405
    code = "method_not_allowed"


class DocumentNotFound(DocraftError):
    """A mutation addressed a document that does not exist."""

    status = 404
    code = "document_not_found"


class DuplicateKey(DocraftError):
    """An insert used a primary key that is already stored."""

    status = 409
    code = "duplicate_key"


class ValidationError(DocraftError):
    """A document does not satisfy its model; ``details['field']`` names the field."""

    status = 422
    code = "validation_failed"


class IdempotencyKeyReused(DocraftError):
    """An idempotency key (request id) already named a different request; nothing was applied."""

    status = 422
    code = "idempotency_key_reused"


class NotLeader(DocraftError):
    """This replica does not lead its group; ``details['leader']`` may name who does."""

    status = 421
    code = "not_leader"


class WrongShard(DocraftError):
    """A key sent to a group that does not hold its slot (moved away, or never held); nothing was stored.

    ``details``: ``slot``; ``owner`` (and ``shard``, the same) the shard id that holds it when known, else
    ``None``; ``epoch`` the version of that claim; ``replicas`` the owner's ``[{"id", "raft", "http"}]``
    when known, else ``[]``. A router patches its slot map from these and retries at the owner.
    """

    status = 421
    code = "wrong_shard"


class SlotFrozen(DocraftError):
    """The key's slot is being moved away (``details``: ``slot``, ``move``, ``retry_after``); writes wait."""

    status = 503
    code = "slot_frozen"


class SlotImporting(DocraftError):
    """The key's slot is being moved here and is not served yet (``details``: ``slot``, ``move``, ``retry_after``)."""

    status = 503
    code = "slot_importing"


class SlotsUnknown(DocraftError):
    """This group has not committed its slot table yet (``details['retry_after']``); it serves no key."""

    status = 503
    code = "slots_unknown"


class CrossShardWrite(DocraftError):
    """A mutation read or wrote a document of another slot than the one it was routed by, and this group does
    not hold that slot (moved away, or never held); rolled back, nothing was stored. ``details``: ``slot``,
    ``owner`` (the shard holding it when known, else ``None``). Sending it again does not help: a mutation may
    touch only its own slot and the documents co-located with it."""

    status = 409
    code = "cross_shard_write"


class MoveRefused(DocraftError):
    """A slot-move step this group cannot take in its state (``details``: ``move``, ``reason``); nothing changed."""

    status = 409
    code = "move_refused"


class NoLeader(DocraftError):
    """A replica group has no reachable leader right now; retry later."""

    status = 503
    code = "no_leader"


class OutcomeUnknown(DocraftError):
    """A write was sent but its outcome could not be learned before the deadline."""

    status = 504
    code = "outcome_unknown"


class EndpointFailed(DocraftError):
    """An app endpoint raised something other than a docraft error: a bug in the app."""

    status = 500
    code = "endpoint_failed"


class CodeMismatch(DocraftError):
    """This replica runs app code other than the code the cluster was created with."""

    status = 503
    code = "code_mismatch"


class ReplicaFlagged(DocraftError):
    """The replica that would answer is flagged by the integrity monitor (divergent or wrong code)."""

    status = 503
    code = "replica_flagged"


class MigrationPending(DocraftError):
    """Stored documents are of an older model version than the code; run ``docraft migrate``."""

    status = 503
    code = "migration_pending"


class MigrationRefused(DocraftError):
    """A migration would leave documents that fail validation; ``details`` lists them."""

    status = 409
    code = "migration_refused"


class FingerprintRefused(DocraftError):
    """No replica of some shard runs the code fingerprint the cluster was asked to accept; nothing changed."""

    status = 409
    code = "fingerprint_refused"


class RepairRefused(DocraftError):
    """Repairing this replica now could cost the group its majority or its data; nothing was done."""

    status = 409
    code = "repair_refused"


class MembershipRefused(DocraftError):
    """A replica-group membership step that is unsafe or out of turn now; nothing changed.

    ``details['reason']``: ``change_pending`` (one change per group at a time), ``no_majority`` (the group
    would be left without a healthy majority), ``not_caught_up``, ``not_a_learner``, ``already_voter``,
    ``not_a_voter``, ``is_voter``, ``old_code`` (a voter without dynamic membership) or ``leads`` (a leader
    cannot remove itself: transfer leadership first).
    """

    status = 409
    code = "membership_refused"


class ReplicaFaulted(DocraftError):
    """This replica does not trust its own state (lost entries, unloadable snapshot); ask another."""

    status = 503
    code = "replica_faulted"


class ShardUnavailable(DocraftError):
    """A replica could not be reached or answered with something unusable."""

    status = 502
    code = "shard_unavailable"


class NotReady(DocraftError):
    """A process is not ready to serve (``GET /readyz``); ``details`` list its checks and which failed."""

    status = 503
    code = "not_ready"


ERROR_CLASSES: dict[str, type[DocraftError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        HostNotAllowed,
        PayloadTooLarge,
        UnsupportedMediaType,
        NotFound,
        MethodNotAllowed,
        DocumentNotFound,
        DuplicateKey,
        ValidationError,
        IdempotencyKeyReused,
        NotLeader,
        WrongShard,
        SlotFrozen,
        SlotImporting,
        SlotsUnknown,
        CrossShardWrite,
        MoveRefused,
        NoLeader,
        OutcomeUnknown,
        EndpointFailed,
        CodeMismatch,
        ReplicaFlagged,
        MigrationPending,
        MigrationRefused,
        FingerprintRefused,
        RepairRefused,
        MembershipRefused,
        ReplicaFaulted,
        ShardUnavailable,
        NotReady,
    )
}


def error_from_json(body: dict[str, Any]) -> DocraftError:
    """Rebuild the error a peer sent as ``{"error": {...}}``.

    Unknown codes become a plain ``DocraftError`` so nothing is lost in transit.
    """
    err = body.get("error") or {}
    cls = ERROR_CLASSES.get(str(err.get("code")), DocraftError)
    return cls(str(err.get("message", "unknown error")), **(err.get("details") or {}))
