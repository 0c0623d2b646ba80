"""Running the count job's chunks on a Dask cluster (optional extra ``simcell[dask]``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from simcell import SimcellError


def _run(job, start: int, stop: int):
    return job(start, stop)


def map_chunks_dask(
    job,
    bounds: Sequence[tuple[int, int]],
    *,
    n_workers: int = 2,
    scheduler: str | None = None,
) -> Iterator[object]:
    """Run ``job(start, stop)`` for every chunk on Dask, yielding results in chunk order.

    The job (world, cell states, counterfactual rows) is scattered once to every
    worker; at most two chunks per worker are in flight so that memory stays
    bounded. Results equal the serial ones: each chunk reads only its own streams.

    Parameters
    ----------
    job : CountJob
    bounds : sequence of (start, stop)
    n_workers : int
        Workers of the local cluster started when ``scheduler`` is None.
    scheduler : str, optional
        Address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SimcellError(
            "engine 'dask' needs the dask extra: pip install 'simcell[dask]'"
        ) from None
    cluster = None
    try:
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,
            )
            client = Client(cluster)
        else:
            try:
                client = Client(scheduler, timeout=30)
            except OSError as error:
                raise SimcellError(f"cannot reach Dask scheduler {scheduler}: {error}") from None
        with client:
            shared = client.scatter(job, broadcast=True)
            window = 2 * max(1, len(client.scheduler_info()["workers"]))
            pending = []
            for start, stop in bounds:
                pending.append(client.submit(_run, shared, start, stop, pure=False))
                while len(pending) > window:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()
    finally:
        if cluster is not None:
            cluster.close()
