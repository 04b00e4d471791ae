"""``python -m launcher.frontend``: the OpenAI-compatible API in front of one Triton model.

Once listening it prints one line to stdout, ``openai front end on http://HOST:PORT/v1`` (``--port 0`` picks
a free port); its log goes to stderr. SIGINT or SIGTERM stops it gracefully (exit 0); a bad flag is one line
naming it, exit 2. The API key is read from the environment variable ``--api-key-env`` names, at start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from launcher.errors import exit_with, user_error

if TYPE_CHECKING:
    from launcher.frontend.app import Settings

PROG = "python -m launcher.frontend"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
GRACE_S = 5  # how long a stop waits for answers still streaming


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit 2), as every llm-launch error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise user_error(PROG, message, "see --help")


def parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--triton", required=True, metavar="HOST:GRPC_PORT", help="the Triton server's gRPC address")
    p.add_argument("--model", required=True, metavar="TRITON_MODEL_NAME", help="the LLM's name in Triton")
    p.add_argument("--served-name", metavar="ID", help="its model id in the API (default: --model)")
    p.add_argument("--alias", action="append", default=[], metavar="ID", help="another model id (repeatable)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer whose chat template formats chats "
                   "(default: the model config's tokenizer_dir)")
    p.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template instead of the tokenizer's")
    p.add_argument("--max-tokens", type=int, metavar="N", help="default and largest max_tokens "
                   "(default: the model config's max_output_len, if it says)")
    p.add_argument("--max-model-len", type=int, metavar="N", help="bound on prompt + max_tokens, in tokens")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    p.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on /v1")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="largest request body")
    p.add_argument("--request-timeout-s", type=float, default=600.0, metavar="S",
                   help="cancel a request that has not finished after S seconds")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browsers from ORIGIN (repeatable; CORS is off without it)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return p


def settings_of(args: argparse.Namespace) -> Settings:
    """The app's settings, every flag checked (a :class:`LauncherError` naming the first bad one)."""
    from launcher.frontend.app import Settings  # fastapi's import is slow: not for --help or a bad flag

    host, _, port = args.triton.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise user_error("--triton", f"'{args.triton}' is not HOST:PORT", "pass the Triton server's gRPC address, "
                         "e.g. 127.0.0.1:8001")
    for flag, value in (("--max-tokens", args.max_tokens), ("--max-model-len", args.max_model_len),
                        ("--max-body-bytes", args.max_body_bytes)):
        if value is not None and value < 1:
            raise user_error(flag, f"must be at least 1, got {value}")
    if args.max_tokens and args.max_model_len and args.max_tokens >= args.max_model_len:
        raise user_error("--max-tokens", f"{args.max_tokens} leaves no room for a prompt in --max-model-len "
                         f"{args.max_model_len}", "make it smaller than --max-model-len")
    if not 0 <= args.port < 65536:
        raise user_error("--port", f"{args.port} is not a port", "pass 1-65535, or 0 for a free one")
    if not args.request_timeout_s > 0:
        raise user_error("--request-timeout-s", f"must be more than 0, got {args.request_timeout_s:g}")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise user_error("--tokenizer", f"{args.tokenizer} is not a directory", "pass the model's tokenizer "
                         "directory")
    template = None
    if args.chat_template is not None:
        try:
            template = Path(args.chat_template).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise user_error("--chat-template", f"cannot read {args.chat_template}: {err}",
                             "pass a Jinja chat template file") from None
    key = None
    if args.api_key_env is not None:
        key = os.environ.get(args.api_key_env, "").strip()
        if not key:
            raise user_error("--api-key-env", f"the variable {args.api_key_env} is not set (or empty)",
                             f"export {args.api_key_env}=<key>, or leave --api-key-env out")
    return Settings(triton=args.triton, model=args.model, served_name=args.served_name or args.model,
                    aliases=tuple(args.alias), tokenizer=args.tokenizer, chat_template=template,
                    max_tokens=args.max_tokens, max_model_len=args.max_model_len, api_key=key,
                    max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout_s,
                    cors_origins=tuple(args.cors_origin))


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as err:
        raise user_error("--port", f"cannot listen on {host}:{port}: {err.strerror or err}",
                         "pick a free port, or 0 for any") from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and serve until SIGINT/SIGTERM; raises LauncherError on bad flags."""
    args = parser().parse_args(argv)
    settings = settings_of(args)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = listen(args.host, args.port)
    import uvicorn

    from launcher.frontend.app import create_app

    url = url_of(sock)

    class Server(uvicorn.Server):
        """uvicorn that prints the front end's line once listening, and stops on a signal without re-raising it
        (a stop asked for is a clean exit)."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"openai front end on {url}", flush=True)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(create_app(settings), log_config=None, log_level=args.log_level,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=GRACE_S, server_header=False)
    server = Server(config)
    with sock:
        server.run(sockets=[sock])
    return 0 if server.started else 1


def main() -> NoReturn:
    exit_with(run)
