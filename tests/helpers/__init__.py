"""Helpers shared by the tool and real test tiers (one package, imported as ``helpers.<module>``):

- ``ci_shims``: recording ``invoke``/``nox`` shims for the CI template tests;
- ``mirror_support``: tiny images and a rate-limit/fault proxy for the mirror tests and benchmark;
- ``images``: real images pushed with skopeo; ``run``: kiln's tasks as a subprocess;
- ``secure``: TLS and token registries; ``fault_proxy``: a fault-injecting registry proxy.
- ``gnu_cpp``: GNU cpp, the reference for kiln's preprocessor (skipped locally, required in CI).
"""
