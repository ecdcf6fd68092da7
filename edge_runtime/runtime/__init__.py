"""Everything about a .tflite file: backends, delegates, models, quantization."""
