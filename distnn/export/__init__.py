"""A trained distnn network as an ONNX graph (`distnn export`), checked by ONNX Runtime."""
