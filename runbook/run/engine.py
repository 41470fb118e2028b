"""A papermill engine that runs every stage of a run on one kernel *and one kernel client*.

papermill's own nbclient engine connects a new client for each notebook, and each new
client waits for the kernel's IOPub channel to answer (a ZeroMQ subscriber joins late, so
that wait runs into its 0.2 s timeout): 0.2 s per stage, more than a stage's remote
commands on a re-run. The runner starts one kernel and one client; this engine hands that
client to each notebook instead of connecting a new one.
"""

from __future__ import annotations

from nbclient.util import run_hook, run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger
from papermill.utils import remove_args

NAME = "runbook-shared-kernel"


class _SharedClient(PapermillNotebookClient):
    def __init__(self, nb_man, shared_kc=None, **kwargs):
        super().__init__(nb_man, **kwargs)
        self.shared_kc = shared_kc

    async def async_start_new_kernel_client(self):
        if self.shared_kc is None:
            return await super().async_start_new_kernel_client()
        self.kc = self.shared_kc
        self.kc.allow_stdin = False
        await run_hook(self.on_notebook_start, notebook=self.nb)
        return self.kc

    # nbclient binds the sync twin to its own coroutine at class creation: rebind it
    start_new_kernel_client = run_sync(async_start_new_kernel_client)


class SharedKernelEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False,
                                 start_timeout=60, execution_timeout=None, shared_kc=None,
                                 **kwargs):
        # NBClientEngine's recipe, with our client class and the shared client.
        kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
        client = _SharedClient(
            nb_man, shared_kc=shared_kc, timeout=execution_timeout,
            startup_timeout=start_timeout, kernel_name=kernel_name, log=logger,
            log_output=log_output, **kwargs,
        )
        return client.execute()


papermill_engines.register(NAME, SharedKernelEngine)
