"""shutdown while handler futures are pending: pygls cancels them, and their done callbacks
(which drop finished futures, so notifications do not leak) must not break that loop."""

from __future__ import annotations

from concurrent.futures import Future

from lsp_server.server import create_server


def test_shutdown_cancels_pending_futures_whose_callbacks_remove_them() -> None:
    ls = create_server()
    proto = ls.protocol
    pending: list[Future] = []
    for i in range(5):
        f: Future = Future()  # a threaded handler not yet started: cancel() runs callbacks at once
        proto._request_futures[f"n{i}"] = f
        f.add_done_callback(lambda done, key=f"n{i}": proto._request_futures.pop(key, None))
        pending.append(f)
    proto._ctx_msg_id.set("shutdown-1")
    steps = proto.lsp_shutdown(None)
    try:
        while True:
            handler, args, _ = next(steps)
            handler(*args)
    except StopIteration:
        pass
    assert all(f.cancelled() for f in pending)
    assert proto._request_futures == {}
    assert proto._shutdown
