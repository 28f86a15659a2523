"""One failing request never fails the others batched with it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)


def isolated(fn: Callable[[list], list], requests: Sequence, what: str) -> list:
    """``fn`` over a batch; when the batch fails, each request again on its own, so that only the request
    that fails gets its exception back (as its result: :func:`unwrap` raises it for that caller only)."""
    try:
        return fn(list(requests))
    except Exception as batch_error:  # noqa: BLE001 - narrowed below, request by request
        if len(requests) == 1:
            return [batch_error]
        log.warning("%s: a batch of %d failed (%s); scoring its requests one by one", what, len(requests), batch_error)
        out = []
        for r in requests:
            try:
                out.append(fn([r])[0])
            except Exception as e:  # noqa: BLE001 - this request's own failure, returned to it alone
                log.error("%s: a request failed: %s", what, e)
                out.append(e)
        return out


def unwrap(result):
    """The result of one request of an :func:`isolated` batch: raises its own exception, if it had one."""
    if isinstance(result, Exception):
        raise result
    return result
