"""Draw docs/img/scheduler-graph.png: the scheduler's graph for a tiny example federation.

Run: .venv/bin/python docs/img/scheduler_graph.py  (needs matplotlib from the dev extra)
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import networkx as nx

from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.snapshot import (
    FlavorView,
    HostView,
    ImageView,
    PriceRow,
    ProviderView,
    ReplicaView,
    build_snapshot,
)


def example() -> FederationGraph:
    providers = [ProviderView(1, "nchc", "openstack", True, frozenset({"live_migration", "nested_virt"})),
                 ProviderView(2, "aws", "aws", False, frozenset({"import_image"}))]
    sites = [(1, 1, "nchc/hsinchu", "hsinchu", "TW"), (2, 1, "nchc/taichung", "taichung", "TW"),
             (3, 2, "aws/us-east-1", "us-east-1", "US")]
    hosts = [HostView(1, "h1", 1, "kvm", "x86_64"), HostView(2, "h2", 1, "kvm", "x86_64"),
             HostView(3, "h3", 2, "esxi", "x86_64")]
    flavors = [FlavorView(1, "m5.xlarge", 2, None, 4, 16384)]
    prices = [PriceRow(2, "us-east-1", "m5.xlarge", Decimal("0.192"), "USD")]
    snap = build_snapshot(currency="USD", providers=providers, sites=sites, hosts=hosts, flavors=flavors,
                          prices=prices, images=[ImageView("img", "course", format="vmdk", hypervisor="esxi")],
                          replicas=[ReplicaView("img", 2, "vmdk")])
    return FederationGraph(snap)


def main() -> None:
    g = example().graph
    keep = [n for n, d in g.nodes(data=True) if not str(n).startswith("format:") or n in
            ("format:qcow2", "format:raw", "format:vmdk", "format:vhdx")]
    keep += [n for n in g.nodes if str(n).startswith("hv:")]
    sub = nx.DiGraph(g.subgraph(keep))
    layers = {"provider": 0, "site": 1, "host": 2, "flavor": 2, "replica": 2}
    pos: dict[str, tuple[float, float]] = {}
    columns: dict[int, list[str]] = {}
    for n in sub.nodes:
        kind = g.nodes[n].get("kind") or ("hv" if str(n).startswith("hv:") else "format")
        col = layers.get(kind, 3 if kind == "format" else 4)
        columns.setdefault(col, []).append(n)
    for col, nodes in columns.items():
        for i, n in enumerate(sorted(nodes)):
            pos[n] = (col * 3.0, -i * 1.2)
    colours = {"provider": "#f4a261", "site": "#2a9d8f", "host": "#8ecae6", "flavor": "#bde0fe",
               "replica": "#e9c46a"}
    node_colours = [colours.get(g.nodes[n].get("kind"), "#d3d3d3") for n in sub.nodes]
    labels = {n: (g.nodes[n].get("name") or str(n)).replace("replica:", "replica ") for n in sub.nodes}
    edge_colours = []
    for u, v in sub.edges:
        kinds = {d["kind"] for d in g.get_edge_data(u, v).values()}
        edge_colours.append("#e76f51" if "transfer" in kinds else "#264653" if "convert" in kinds else "#999999")
    fig, ax = plt.subplots(figsize=(14, 8))
    nx.draw_networkx(sub, pos, ax=ax, node_color=node_colours, labels=labels, font_size=7, node_size=1400,
                     edge_color=edge_colours, arrowsize=8, connectionstyle="arc3,rad=0.08")
    ax.set_title("metavmm scheduler graph (example): providers -> sites -> hosts/flavors; replicas at sites;\n"
                 "red: transfer edges between sites (bandwidth, latency, egress); dark: conversions "
                 "(qemu-img between formats, virt-v2v esxi -> kvm, formats -> hypervisors they boot)", fontsize=9)
    ax.axis("off")
    out = Path(__file__).with_name("scheduler-graph.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
