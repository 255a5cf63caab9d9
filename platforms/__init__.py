"""Platform profiles as data (one TOML file per device), installed as ``edge_awq.platforms``."""
