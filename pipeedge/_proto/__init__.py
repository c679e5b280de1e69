"""Generated gRPC modules (built by pip install from protos/); never edit."""
