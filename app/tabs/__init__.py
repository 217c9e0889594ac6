"""One module per tab: each builds its components and wires its events to plain handler functions."""
