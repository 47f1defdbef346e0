"""`metavmm school` and `metavmm publisher`: the operator manages schools and namespaces, and the
membership is what the marketplace's visibility rule reads."""

from __future__ import annotations

from click.testing import CliRunner, Result

from metavmm.catalog import db
from metavmm.cli.main import main
from metavmm.services.marketplace.entries import project_audience
from metavmm.services.marketplace.schools import project_by_ref


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database", url, *args])


async def peers(url: str, project: str) -> set[str]:
    """Names of the projects sharing a school with ``project``, as the visibility rule sees them."""
    engine = db.make_engine(url)
    try:
        async with db.make_sessionmaker(engine)() as s:
            audience = await project_audience(s, (await project_by_ref(s, project)).id or 0)
            return {(await project_by_ref(s, pid)).name for pid in audience.school_project_ids}
    finally:
        await engine.dispose()


async def test_school_and_publisher_commands(sqlite_url: str) -> None:
    import asyncio

    def cli(*args: str) -> Result:
        return run(sqlite_url, *args)

    for project in ("alpha", "beta", "gamma"):
        assert (await asyncio.to_thread(cli, "project", "create", project)).exit_code == 0
    made = await asyncio.to_thread(cli, "school", "create", "north")
    assert made.exit_code == 0 and "school north: no member projects" in made.output, made.output
    twice = await asyncio.to_thread(cli, "school", "create", "north")
    assert twice.exit_code != 0 and "already exists" in twice.output and "Traceback" not in twice.output
    for project in ("alpha", "gamma"):
        added = await asyncio.to_thread(cli, "school", "add", "north", project)
        assert added.exit_code == 0, added.output
    assert "school north: alpha, gamma" in added.output
    unknown = await asyncio.to_thread(cli, "school", "add", "north", "nobody")
    assert unknown.exit_code != 0 and "no project nobody" in unknown.output
    assert await peers(sqlite_url, "gamma") == {"alpha", "gamma"}
    assert await peers(sqlite_url, "beta") == set()
    listed = await asyncio.to_thread(cli, "school", "list")
    assert listed.exit_code == 0 and "north" in listed.output and "alpha, gamma" in listed.output

    removed = await asyncio.to_thread(cli, "school", "remove", "north", "gamma")
    assert removed.exit_code == 0 and "school north: alpha" in removed.output
    assert await peers(sqlite_url, "gamma") == set()
    again = await asyncio.to_thread(cli, "school", "remove", "north", "gamma")
    assert again.exit_code != 0 and "not a member" in again.output

    granted = await asyncio.to_thread(cli, "publisher", "grant", "alpha-lab", "--project", "alpha")
    assert granted.exit_code == 0 and "publisher alpha-lab: alpha" in granted.output, granted.output
    both = await asyncio.to_thread(cli, "publisher", "grant", "alpha-lab", "--project", "beta", "--broker")
    assert both.exit_code != 0 and "exactly one" in both.output
    owners = await asyncio.to_thread(cli, "publisher", "list")
    assert owners.exit_code == 0 and "alpha-lab" in owners.output and "cli" in owners.output
    gone = await asyncio.to_thread(cli, "school", "delete", "north")
    assert gone.exit_code == 0 and "north" not in (await asyncio.to_thread(cli, "school", "list")).output
