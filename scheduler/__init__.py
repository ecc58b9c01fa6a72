"""smsledger's time and loop: the daemon, the provider package and the command."""

#: Marks this package as smsledger's own (PyPI has an unrelated `scheduler`): see
#: `scheduler.cli.origin`.
__smsledger__ = True
