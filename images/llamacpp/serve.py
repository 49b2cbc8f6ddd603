"""The llamacpp image's entrypoint: llama-cpp-python's server (`python3 -m llama_cpp.server`, the
same arguments), except that a server told to stop finishes the answers it is streaming.

llama-cpp-python streams through sse-starlette, which by default ends every open event stream as
soon as uvicorn begins to shut down: a pod stopped by a rollout, a scale-in or a node drain cut its
answers mid-sentence (the client got an error event; docs/architecture.md). With that turned off,
uvicorn's own shutdown is what happens on SIGTERM: it stops accepting connections, closes the idle
ones, and exits once every response in flight has ended. It sets no limit of its own here; the
pod's terminationGracePeriodSeconds is the limit (the operator gives llama.cpp pods 120 s).
"""

import runpy

from sse_starlette.sse import AppStatus

AppStatus.disable_automatic_graceful_drain()
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
