"""Shared test machinery: ispd as a real process, network namespaces, free ports, config files.

Every service issue reuses these; keep them general.
"""
