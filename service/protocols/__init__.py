"""Protocol adapters: wire formats (native, TF Serving REST, KServe v2) to and from the data plane's values.

Each module turns one protocol's requests into `service.dataplane` request values and the data
plane's responses into that protocol's JSON or bytes. Adapters never call a model or the manager.
"""
