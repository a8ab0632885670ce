"""Process exit codes every opscale program shares."""

# Bad input (settings, files, arguments): every command prints one `error:` line and exits so
# (opscale.cli.errors.fail); `opscale up` does not restart a service that exits so, since it would refuse
# the same input again.
BAD_INPUT_EXIT_CODE = 2
