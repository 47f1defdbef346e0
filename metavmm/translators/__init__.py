"""Translators: disk formats, OVF/OVA, virt-v2v, CPU compatibility, and spec mappings."""
