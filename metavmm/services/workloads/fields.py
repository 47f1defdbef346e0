"""The fields of a compute create that every front end's body declares the same way.

``POST /workloads`` (:class:`metavmm.api.rest.workloads.WorkloadCreate`) and the marketplace launch
(:class:`metavmm.services.marketplace.launch.LaunchIn`, served by REST and the dashboard) both end in the
workload service's create. Declaring these fields once keeps the two bodies from drifting apart: a field the
create gains (as the placement groups were) reaches a launch too, with the same limits and the same words
in the API reference. The service checks every value again (:mod:`.requests`); these limits only make a
bad body a 400 before it gets there.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from metavmm.services.workloads.requests import GROUP_PATTERN, SSH_KEY_MAX, USER_DATA_MAX

GpuModel = Annotated[str | None, Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,48}$")]
GpuCount = Annotated[int, Field(default=0, ge=0, le=64)]
SshKey = Annotated[str | None, Field(
    default=None, min_length=1, max_length=SSH_KEY_MAX,
    description="compute: an OpenSSH public key line, installed by cloud-init for the image's default user")]
UserData = Annotated[str | None, Field(
    default=None, min_length=1, max_length=USER_DATA_MAX,
    description="compute: cloud-init user data (#cloud-config, a script...), passed to the guest as given")]
AffinityGroup = Annotated[str | None, Field(
    default=None, pattern=GROUP_PATTERN,
    description="compute: the project's group whose members share a host (placement and rebalance moves keep "
                "them together)")]
AntiAffinityGroup = Annotated[str | None, Field(
    default=None, pattern=GROUP_PATTERN,
    description="compute: the project's group whose members never share a host (placement and rebalance moves "
                "keep them apart)")]
Residency = Annotated[list[str], Field(
    default_factory=list, max_length=64,
    description="compute: the countries (ISO 3166 alpha-2) it may run in, kept for its later moves; empty: any")]
