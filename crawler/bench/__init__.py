"""The embedded benchmark server (``crawler serve``) and the benchmark (``crawler bench``)."""
