"""The command line's commands that drive several layers (`python -m training <command>`, see training/cli.py)."""
