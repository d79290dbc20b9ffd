"""Model layers of avatar-cluster: one small interface per layer, one module per backend.

Heavy SDKs are imported only inside their backend module, so importing this package is cheap.
"""
