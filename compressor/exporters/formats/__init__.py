"""One module per file format. Each declares its row, ``FORMAT = Format(...)``
(:class:`compressor.exporters.rows.Format`): suffix, precisions, what to install, its exporter, the format it
converts from and the backends that run its files (their Runner classes beside the exporter, or in
:mod:`compressor.exporters.runtimes` for the PyTorch and ONNX Runtime runners several backends share).
:mod:`compressor.exporters.table` reads every module here; adding a format is adding a module."""
