"""Labelled synthetic traffic: a population of accounts, genuine spending, injected fraud patterns, and sinks.

One implementation used three ways: this library, `txguard generate`, and the scheduled generate function.
`generate(params)` is the in-memory core (also what the benchmark measures); `sinks` sends a run somewhere.
"""

from txguard.labels import GENUINE
from txguard_generator.params import GenerateParams, ParameterError, parse_params
from txguard_generator.patterns import PATTERN_NAMES
from txguard_generator.traffic import GeneratedRun, Labelled, generate

__all__ = [
    "GENUINE",
    "PATTERN_NAMES",
    "GenerateParams",
    "GeneratedRun",
    "Labelled",
    "ParameterError",
    "generate",
    "parse_params",
]
