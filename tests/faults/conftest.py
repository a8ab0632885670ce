"""The fault suite: each case runs a live stack of its own (see _harness) and kills a part of it."""
