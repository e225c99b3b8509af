"""Command-line scripts that compose whole jobs (`python -m jaxagents.scripts.<name>`)."""
