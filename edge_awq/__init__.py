"""edge-awq: AWQ INT4 quantization and a memory-frugal runtime for LLMs on edge GPUs.

Importing the package is free: no GPU queries, no kernel compiles, no global state.
"""

__version__ = "0.1.0"
