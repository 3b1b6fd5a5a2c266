"""Mirroring upstream images (Docker Hub, ...) into our registry without spending pulls.

``config`` reads and validates ``mirrors.yml``; ``plan`` decides skip/copy/error from HEAD results
(pure); ``ratelimit`` keeps the source's pull budget above a floor; ``run`` probes, copies with
skopeo in parallel and reports; ``lint`` checks that build files and CI YAML use the mirror.
"""
