"""The image marketplace: schools publish an image once, and every site launches it.

- :mod:`.entries`: the entry fields, who sees what, search and filters (the ``Image`` row is the truth);
- :mod:`.publish`: upload or register a disk, checksums verified, content inspected, versions chained;
- :mod:`.imagelist` and :mod:`.subscriptions`: signed image lists between sites (HEPiX style);
- :mod:`.replication`: copy, verify, convert and register an image at the site that needs it;
- :mod:`.launch`: an image to a VM anywhere, as a create of the workload service; and replicate;
- :mod:`.stream`: every byte moved with its SHA-256 and SHA-512 computed on the way.
"""
