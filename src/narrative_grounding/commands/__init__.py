"""The sub-commands of the `narrative-grounding` CLI, one module each (see ``narrative_grounding.cli``).

Each module exposes ``register(subparsers)``; the library code they call lives in the packages named
after what it does (``data``, ``training``, ``conversion``, ...), so a command module holds only its
options and the few lines that run them.
"""
