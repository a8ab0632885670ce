"""Generated from proto/opscale/v1 by scripts/gen_proto.py. Do not edit."""
