"""The protocol front ends (HTTP: v2 and TF-Serving REST; gRPC: v2) and the server lifecycle."""
