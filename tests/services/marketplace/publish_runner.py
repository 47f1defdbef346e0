"""A broker process that publishes one upload and is killed on the way (issue 16: the blob a killed
publish leaves behind; test_blob_sweep.py).

Usage: python -m tests.services.marketplace.publish_runner DATABASE_URL SOURCE NAME POINT

SOURCE (a local file, its format its suffix) is sent as an upload (chunks, as REST's PUT hands them
over) under the entry NAME.
POINT is where the process stops, prints ``AT <point>`` and waits for SIGKILL:

- ``streaming``: after the first chunk reached the store's scratch directory;
- ``stored``: when the blob was moved into the store, before its row is written;
- ``flushed``: the row written (flushed), before the commit.

Any other POINT publishes to the end and prints ``FINISHED``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.services.marketplace import publish as publishing
from metavmm.services.marketplace.entries import ImageMeta

CHUNK = 1 << 20


async def halt(point: str) -> None:
    print(f"AT {point}", flush=True)
    await asyncio.sleep(3600)


async def main(url: str, source: str, name: str, point: str) -> None:
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    real_store = publishing._store

    def store(*args: Any) -> Path:
        final = real_store(*args)
        if point == "stored":  # the whole process stops here: nothing after the move runs
            print(f"AT {point}", flush=True)
            time.sleep(3600)
        return final

    async def chunks() -> AsyncIterator[bytes]:
        data = Path(source).read_bytes()
        for i in range(0, len(data), CHUNK):
            yield data[i:i + CHUNK]
            if point == "streaming":
                await asyncio.sleep(0.2)  # the writer thread wrote the chunk
                await halt(point)

    publishing._store = store  # type: ignore[assignment]
    meta = ImageMeta(name=name, publisher="school-a", format=Path(source).suffix.lstrip("."), visibility="federation")
    try:
        async with session_scope(sessions) as session:
            await publishing.publish(session, meta, chunks())
            if point == "flushed":
                await halt(point)
        print("FINISHED", flush=True)
    finally:
        await sql.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
