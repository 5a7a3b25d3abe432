"""Configuration: typed YAML -> dataclasses (with dotted overrides), the data
config, and the rule that keeps credentials out of written files."""
