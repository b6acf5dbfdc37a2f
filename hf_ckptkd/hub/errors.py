"""The Hub's errors as hf-ckptkd raises them, and the translation of the client's errors into them.

Every message names the repo (or teacher reference) and what to change; none ever holds a token.
Three families: `HubInputError` (the user must change something: repo id, token, what is pushed),
`HubUnavailableError` (the Hub cannot be reached and the cache does not help) and, for loading,
`HubReferenceError`, a `TeacherReferenceError` like every other reference that loads nothing.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..references import TeacherReferenceError


def _transport_errors() -> tuple[type[Exception], ...]:
    """The connection errors the Hub client lets through unwrapped (a refused or dropped connection).

    The client raises its own classes for HTTP answers, but not for a connection that never got
    one: those come from its transport, `httpx` in huggingface_hub 1.x and `httpx2` in 2.x. Both are
    looked up, so the package imports whichever of the two the installed client brings.
    """
    errors = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except ImportError:
            continue
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


class HubError(RuntimeError):
    """A push or pull that failed on the Hub's side (e.g. the Hub cannot be reached)."""


class HubInputError(HubError, ValueError):
    """A push or pull the user must change: repo id, token, reference, or what is pushed."""


class HubUnavailableError(HubError):
    """The Hub cannot be reached (or offline mode is on) and what is needed is not in the cache."""


class HubReferenceError(TeacherReferenceError):
    """A Hub teacher reference that names no loadable teacher (missing repo, revision or model)."""


def endpoint() -> str:
    """The Hub the client talks to (`HF_ENDPOINT`), read when needed so tests can point it elsewhere."""
    return constants.ENDPOINT


@contextmanager
def push_errors(repo_id: str):
    """Turn the client's errors into one sentence naming the repo and what to fix (never the token)."""
    try:
        yield
    except HubError:
        raise
    except LocalTokenNotFoundError:
        raise HubInputError(f"pushing to {repo_id} needs a Hub token with write access, and none was found: pass "
                            "token=... (or --token), set HF_TOKEN, or run `hf auth login`") from None
    except HFValidationError as e:
        raise HubInputError(f"{repo_id!r} is not a valid Hub repo id ({e})") from None
    except RepositoryNotFoundError:
        raise HubInputError(f"{repo_id} cannot be found or written on {endpoint()} with this token; check the "
                            "repo id and that the token's user owns its namespace") from None
    except HfHubHTTPError as e:
        raise _push_http_error(repo_id, e) from None
    except (*TRANSPORT_ERRORS, OfflineModeIsEnabled) as e:
        raise HubUnavailableError(f"could not reach the Hub at {endpoint()} to push {repo_id} ({type(e).__name__}: {e}); "
                                  "check the connection and HF_ENDPOINT, and that HF_HUB_OFFLINE is not set") from None


def _push_http_error(repo_id: str, e: HfHubHTTPError) -> HubError:
    status = e.response.status_code if e.response is not None else None
    if status == 401:
        return HubInputError(f"the Hub at {endpoint()} refused the token while pushing to {repo_id} (401: missing "
                             "or invalid token); pass a valid write token (token=..., --token, HF_TOKEN or "
                             "`hf auth login`)")
    if status == 403:
        return HubInputError(f"the token may not write to {repo_id} (403: read-only token, or another user's "
                             "namespace); use a write token of the repo's owner")
    if status == 412:
        return HubError(f"{repo_id} changed on the Hub while pushing (someone else pushed); push again")
    return HubError(f"the Hub at {endpoint()} failed while pushing to {repo_id}: {e}")


def _unreachable() -> str:
    """Why the client could not fetch what it needed, for a `LocalEntryNotFoundError`."""
    return "offline mode is on (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else \
        f"the Hub at {endpoint()} could not be reached"


def _refused(e: HfHubHTTPError) -> int | None:
    """The status of an answer that refused the token (401, 403), else None."""
    status = e.response.status_code if e.response is not None else None
    return status if status in (401, 403) else None


@contextmanager
def download_errors(reference: str, repo_id: str, filename: str, revision: str | None):
    """Turn the client's errors on downloading `filename` for teacher `reference` into sentences that
    name the reference and what to fix. A missing file (`EntryNotFoundError`) passes through: the
    caller knows whether that file was optional."""
    at = f" at revision {revision!r}" if revision else ""
    try:
        yield
    except RepositoryNotFoundError:
        raise HubReferenceError(
            f"teacher {reference!r}: there is no model repo {repo_id} on {endpoint()} (or it is private and the "
            "token cannot read it); check the name, or log in / set HF_TOKEN for a private repo") from None
    except RevisionNotFoundError:
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} has no revision {revision!r} (branch, tag or "
                                f"commit){_known_revisions(repo_id)}") from None
    except LocalEntryNotFoundError:
        raise HubUnavailableError(f"teacher {reference!r}: {_unreachable()} and {filename}{at} of {repo_id} is not in "
                                  f"the local cache ({constants.HF_HUB_CACHE}); check the connection and HF_ENDPOINT "
                                  "(or unset HF_HUB_OFFLINE), or load it once while online") from None
    except EntryNotFoundError:  # the repo and revision exist, the file does not
        raise
    except HfHubHTTPError as e:
        if _refused(e):
            raise HubReferenceError(f"teacher {reference!r}: the Hub at {endpoint()} refused the token ({_refused(e)}); "
                                    "fix or unset HF_TOKEN (public repos need none)") from None
        raise HubError(f"teacher {reference!r}: the Hub at {endpoint()} failed: {e}") from None


@contextmanager
def repo_errors(repo_id: str, token: str | bool | None, doing: str):
    """Turn the client's errors while `doing` something with a whole repo (listing its revisions,
    downloading one) into sentences that name the repo and what to fix. A missing revision
    (`RevisionNotFoundError`) and a missing file pass through: the caller knows what they mean."""
    tokenless = token is False or (token is None and get_token() is None)
    pass_token = "pass a token (token=..., --token, HF_TOKEN or `hf auth login`)"
    try:
        yield
    except (RevisionNotFoundError, EntryNotFoundError):
        raise
    except GatedRepoError:  # a RepositoryNotFoundError, so first
        who = "no token was sent" if tokenless else "the token's user has not been granted access"
        raise HubInputError(f"{repo_id} is a gated repo on {endpoint()} and {who}, so {doing} failed; accept its "
                            f"conditions at {endpoint()}/{repo_id}, then {pass_token} of a user with access") from None
    except RepositoryNotFoundError:
        hint = f"if it is private, {pass_token} that can read it" if tokenless else \
            "if it is private, use a token of a user who can read it"
        raise HubInputError(f"there is no model repo {repo_id} on {endpoint()} that this client may read, so {doing} "
                            f"failed; check the name ({hint})") from None
    except LocalEntryNotFoundError:
        raise HubUnavailableError(f"{doing} failed: {_unreachable()} and what is needed is not in the local cache "
                                  f"({constants.HF_HUB_CACHE}); check the connection and HF_ENDPOINT") from None
    except (*TRANSPORT_ERRORS, OfflineModeIsEnabled) as e:
        raise HubUnavailableError(f"{doing} failed: could not reach the Hub at {endpoint()} ({type(e).__name__}); "
                                  "check the connection and HF_ENDPOINT, and that HF_HUB_OFFLINE is not set") from None
    except HfHubHTTPError as e:
        if _refused(e):
            raise HubInputError(f"the Hub at {endpoint()} refused the token ({_refused(e)}) while {doing}; fix or "
                                "unset HF_TOKEN (public repos need none)") from None
        raise HubError(f"{doing} failed on the Hub at {endpoint()}: {e}") from None


def _known_revisions(repo_id: str) -> str:
    try:
        refs = HfApi().list_repo_refs(repo_id)
    except Exception:  # the listing is only a hint
        return ""
    names = [b.name for b in refs.branches] + [t.name for t in refs.tags]
    return f"; it has {', '.join(names)}" if names else ""


__all__ = ["TRANSPORT_ERRORS", "HubError", "HubInputError", "HubReferenceError", "HubUnavailableError",
           "download_errors", "endpoint", "push_errors", "repo_errors"]
