"""A Tornado process with one no-op JSON endpoint: the machine's HTTP baseline for benchmarks."""

from __future__ import annotations

import argparse
import asyncio

from tornado.web import Application, RequestHandler


class NoopHandler(RequestHandler):
    def get(self) -> None:
        self.write({"ok": True})


async def serve(port: int) -> None:
    Application([(r"/noop", NoopHandler)]).listen(port, address="127.0.0.1")
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_server")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
