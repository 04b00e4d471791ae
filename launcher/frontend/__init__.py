"""An OpenAI-compatible API in front of a Triton LLM, whichever backend serves it.

``python -m launcher.frontend --triton HOST:GRPC_PORT --model NAME`` (``cli``) serves ``/v1/models``,
``/v1/completions`` and ``/v1/chat/completions`` (``app``, FastAPI under uvicorn), ``/health/ready`` and
``/metrics`` (``metrics``). Requests are read and answers written in OpenAI's JSON (``protocol``) and mapped
onto the model's request interface (``launcher.interfaces``: vLLM backend, TensorRT-LLM llmapi or ensemble),
asked of Triton over asyncio gRPC (``upstream``).
"""
