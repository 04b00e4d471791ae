"""The Triton server behind the front end: one model, asked over gRPC with ``tritonclient.grpc.aio``.

A decoupled model is asked over a bidirectional stream of its own per request (one request, then the
client's half of the stream closes; the server ends it after the final response). Other models are asked
with one ``infer`` call. Cancelling either cancels the request in Triton, which tells the backend.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from launcher.interfaces import Options, Piece, Reader, ServedModel

STATUS_TIMEOUT_S = 5.0  # health and config calls
SEND_WAIT_S = 0.05  # the longest Call.sent waits for grpc to take the request (its writer task not yet run)
MAX_MESSAGE_BYTES = 2**31 - 1  # as tritonclient's own channels
# gRPC backs off reconnecting for up to 2 minutes by default: a front end started before Triton would see it
# ready that much later. Retry at least once a second instead.
RECONNECT_MS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000))


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's channel arguments (message sizes, keepalive) with a quick reconnect."""
    keepalive = grpcclient.KeepAliveOptions()
    return [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length",
                                                                   MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data), *RECONNECT_MS]


class ModelError(Exception):
    """The model refused or failed the request (its message, as Triton relays it)."""


class Unavailable(Exception):
    """Triton or the model cannot be reached or is not ready."""


def _failure(message: str) -> Exception:
    unavailable = "unknown model" in message or "is not ready" in message or "unavailable" in message.lower()
    return (Unavailable if unavailable else ModelError)(message)


class Call:
    """One request in Triton: its responses as :class:`Piece` s of new text (``async for``), and
    :meth:`cancel`."""

    def __init__(self, client: Any, served: ServedModel, prompt: str, options: Options, request_id: str) -> None:
        tensors = served.tensors(grpcclient, served.values(prompt, options))
        outputs = served.requested_outputs(grpcclient, options)
        self.reader = Reader(served)
        self.done = False
        self.task: asyncio.Future[Any] | None = None
        self.stream: Any = None
        self.taken = asyncio.Event()
        if served.decoupled:
            async def requests() -> AsyncIterator[dict[str, Any]]:
                self.taken.set()  # grpc's writer task asks for it: the request goes next
                yield {"model_name": served.name, "inputs": tensors, "outputs": outputs, "request_id": request_id}

            self.stream = client.stream_infer(requests())
        else:
            self.task = asyncio.ensure_future(client.infer(served.name, tensors, outputs=outputs,
                                                           request_id=request_id))
            self.taken.set()

    async def sent(self) -> None:
        """Returns once grpc's writer task has taken the request (it writes it next), or after ``SEND_WAIT_S``."""
        if not self.taken.is_set():
            timer = asyncio.get_running_loop().call_later(SEND_WAIT_S, self.taken.set)
            await self.taken.wait()
            timer.cancel()

    def __aiter__(self) -> Call:
        return self

    async def __anext__(self) -> Piece:
        if self.done:
            raise StopAsyncIteration
        try:
            if self.task is not None:
                result = await self.task
                self.done = True
                return self.reader.read(result)
            while True:
                result, error = await self.stream.__anext__()
                if error is not None:
                    self.done = True
                    raise _failure(error.message())
                response = result.get_response()
                self.done = response.parameters["triton_final_response"].bool_param
                if response.outputs:
                    return self.reader.read(result)
                if self.done:
                    raise StopAsyncIteration
        except StopAsyncIteration:
            self.done = True
            raise
        except InferenceServerException as err:
            self.done = True
            raise _failure(err.message()) from err
        except grpc.RpcError as err:
            self.done = True
            raise Unavailable(f"Triton: {err}") from err

    def cancel(self) -> None:
        """Cancel the request in Triton (nothing to do once it has ended)."""
        self.taken.set()
        if self.done:
            return
        self.done = True
        if self.task is not None:
            self.task.cancel()
        else:
            self.stream.cancel()


class Upstream:
    """The Triton server at ``url`` and its model ``name``."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.client = grpcclient.InferenceServerClient(url, channel_args=channel_args())
        self.ids = itertools.count(1)

    async def ready(self) -> bool:
        """Whether the server and the model are ready (``False`` when the server does not answer)."""
        try:
            return bool(await self.client.is_server_ready(client_timeout=STATUS_TIMEOUT_S)
                        and await self.client.is_model_ready(self.name, client_timeout=STATUS_TIMEOUT_S))
        except (InferenceServerException, grpc.RpcError):
            return False

    async def model(self) -> ServedModel:
        """The model's interface, read from its config (raises ``LauncherError`` for a model that is not an
        LLM, :class:`Unavailable` while it cannot be read)."""
        try:
            config = await self.client.get_model_config(self.name, as_json=True, client_timeout=STATUS_TIMEOUT_S)
        except (InferenceServerException, grpc.RpcError) as err:
            raise Unavailable(str(err)) from err
        return ServedModel.from_config(self.name, config.get("config", config))

    def generate(self, served: ServedModel, prompt: str, options: Options) -> Call:
        """Send ``prompt`` to the model; read the answer from the returned :class:`Call`."""
        return Call(self.client, served, prompt, options, f"openai-{next(self.ids)}")

    async def close(self) -> None:
        await self.client.close()
