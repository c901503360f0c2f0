"""The gRPC protocol definition and the modules generated from it."""
