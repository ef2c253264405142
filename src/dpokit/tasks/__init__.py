"""Built-in tasks behind `dpokit demo`."""
