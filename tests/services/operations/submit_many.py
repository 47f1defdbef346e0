"""A broker process for the scale-out test: submits operations concurrently through the Engine.

Usage: python -m tests.services.operations.submit_many CONFIG DATABASE_URL FIRST LAST
(idempotency keys key-FIRST .. key-LAST-1; prints one operation id per line).
"""

from __future__ import annotations

import asyncio
import sys

from metavmm.catalog import db
from metavmm.foundation.config import load_config
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.plan import Step


async def main(config_path: str, url: str, first: int, last: int) -> None:
    engine = db.make_engine(url)
    ops = Engine(db.make_sessionmaker(engine), load_config(config_path), url)
    await ops.start()
    try:
        steps = [Step(f"s{i}", "test.once", {"sleep_s": 0.05}) for i in range(3)]
        submitted = await asyncio.gather(*(ops.submit(kind="test", steps=steps, idempotency_key=f"key-{i}")
                                           for i in range(first, last)))
        print("\n".join(op.id for op in submitted), flush=True)
    finally:
        await ops.stop()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
