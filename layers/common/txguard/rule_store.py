"""Kept for imports outside the layer's core until they move: rule set versions are storage/rule_sets.py."""

from txguard.storage.rule_sets import apply_rule_set as apply_rule_set
from txguard.storage.rule_sets import disable_rule as disable_rule
from txguard.storage.rule_sets import history as history
from txguard.storage.rule_sets import latest as latest
