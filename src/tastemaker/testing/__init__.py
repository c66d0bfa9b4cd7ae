"""Helpers for tests and benchmarks: real servers started on free loopback ports.

Needs the `dev` extra (it ships the Valkey binary). Never imported by the engine itself.
"""
