"""Watch it learn in a browser: live training at full C++ speed, the insides, sampling.

    python -m fastmlp.serve                  # http://127.0.0.1:8000, runs in ./serve-out
    python -m fastmlp.serve -o out --open    # open a trained work dir; --open starts the browser

One local page (Starlette on uvicorn, charts by plotly.js from the plotly wheel: no
network needed) over a JSON API that a script can drive too (fastmlp.serve.app). Needs
the serve extra: pip install ".[serve]".
"""
from __future__ import annotations

import sys
import threading
import webbrowser
from pathlib import Path
from typing import Optional

from .._cli import ArgumentParser, int_arg, run_cli

LOCAL = ("127.0.0.1", "localhost", "::1")


def build_parser() -> ArgumentParser:
    from .. import _core

    p = ArgumentParser(prog="python -m fastmlp.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--work-dir", default="serve-out",
                   help="the run's folder; one that holds a checkpoint opens it (its curves, sampling, continuing it)")
    p.add_argument("-i", "--input-file", help="word file (default: $FASTMLP_DATA, else the bundled names.txt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (another than this machine's own "
                                                       "loopback lets other machines drive your training)")
    p.add_argument("--port", type=int_arg("--port", 0, 65535), default=8000, help="port (0: any free one)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument("--num-threads", type=int_arg("--num-threads", 1, _core.max_threads()),
                   help="threads for the training (default: all; the page takes little)")
    return p


def serve(work_dir, input_file: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000,
          open_browser: bool = False, num_threads: Optional[int] = None, log=print, ready=None) -> None:
    """Runs the server until Ctrl-C (or SIGTERM); the run then saves its checkpoint."""
    try:
        import plotly  # noqa: F401 (its plotly.js draws the page)
        import uvicorn
        from .app import create_app
    except ImportError as e:
        raise ImportError(f'the page needs the serve extra ({e.name} is missing): pip install "fastmlp[serve]"') \
            from None
    from .session import Session

    session = Session(Path(work_dir), input_file, num_threads)
    app = create_app(session)
    # an open page keeps its event stream open: Ctrl-C waits for it 1 s, not for ever
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    if host not in LOCAL:
        log(f"warning: listening on {host}: anyone who can reach this machine can start, stop and reset "
            "your training")

    def announce():
        while not server.started:
            if not thread.is_alive():
                return
            threading.Event().wait(0.05)
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{bound}/"
        what = f"the run in {work_dir} (step {session.run.step:,})" if session.run else f"a new run in {work_dir}"
        log(f"fastmlp: {url} -- {what}; Ctrl-C to stop (the run is saved)")
        if ready is not None:
            ready(url)
        if open_browser:
            webbrowser.open(url)

    thread = threading.current_thread()
    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    finally:
        session.close()
        if session.run is not None:
            log(f"saved {Path(work_dir) / 'model.npz'} at step {session.run.step:,}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body():
        serve(args.work_dir, args.input_file, args.host, args.port, args.open, args.num_threads,
              log=lambda s: print(s, file=sys.stderr, flush=True))
        return 0

    return run_cli(parser, body)
